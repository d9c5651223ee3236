"""Keyed pseudonyms for identifiers, so manifests can be committed and checked in CI.

Touches DataFrames and the key only. A pseudonym is an HMAC-SHA256 of the value
under a secret key and a per-column namespace, so:

* the same key and value always give the same pseudonym, in any run and any file,
  and grouping, splitting and the leakage audit work unchanged;
* someone holding the original ids but not the key cannot recompute them, which an
  unkeyed hash would allow;
* different columns never collide, because each has its own namespace.

Every column of the manifest gets one treatment, listed in
:attr:`PseudonymResult.treatments`:

* patient, study and accession ids and image ids become 20-character hex strings;
  DICOM UIDs become valid UIDs ``2.25.<decimal of the HMAC>``, cut to 64
  characters; paths that spell out an identifier become ``<hex>.<extension>``,
  with a private path map back to the files;
* every date and date-time (date or timestamp columns, and text columns whose
  DICOM VR is DA or DT) moves by one keyed offset per patient (intervals kept),
  is cut to the year, or is dropped;
* a column that maps back to a DICOM attribute (its name is the keyword in
  snake case, as ``ingest dicom --tags`` names it) gets the action of DICOM
  PS3.15 Annex E, table E.1-1 (:data:`ANNEX_E`): removed, or a UID pseudonym;
* columns of other tables that look like direct identifiers (names, record
  numbers, addresses, telephone numbers, e-mail) by their name or their values
  are dropped; free text is refused until the user keeps or drops it;
* ages over 89 become 90.

The key is never written, printed or logged; manifests record only its
fingerprint, an HMAC of a fixed string. No message quotes a raw identifier.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import math
import os
import re
import secrets
import shlex
import warnings
import zlib
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .choices import DATE_POLICIES, KEY_ENV, PATH_POLICIES
from .dates import parse_dates, read_dates
from .errors import InputError, MdprepError, MdprepWarning, MissingColumnError, UsageError, examples_text
from .fileio import atomic_write
from .manifest import REQUIRED_COLUMNS, Manifest, provenance_step

MIN_KEY_BYTES = 32
MIN_KEY_BITS = 128
ALGORITHM = "HMAC-SHA256"
HEX_LENGTH = 20
MAX_SHIFT_DAYS = 365

#: Identifier columns replaced by hex pseudonyms, and by UID pseudonyms.
HEX_COLUMNS = ("patient_id", "study_id", "accession", "image_id")
UID_COLUMNS = ("series_uid", "sop_uid")
#: Columns that hold the identifiers a path may spell out.
PATH_IDENTIFIERS = ("patient_id", "study_id", "series_uid", "sop_uid", "accession", "image_id")
#: The list column of a series-level manifest naming each row's files (``ingest dicom --level series``): paths, like ``path``.
INSTANCE_PATHS = "instance_paths"
#: A DICOM UID as a file or folder name (``1.2.840.113619.2.55.3.604688119``): an identifier, whatever the row holds.
_UID_NAME = r"(^|[/_-])[0-9]+(\.[0-9]+){4,}"
#: Date columns transformed by the date policy whatever their type.
DATE_COLUMNS = ("study_date", "birth_date")
#: Columns kept under the Retain Patient Characteristics Option (besides labels).
CHARACTERISTICS = ("sex", "view", "modality", "body_part")

#: Treatments listed in :attr:`PseudonymResult.treatments`.
PSEUDONYMISED, SHIFTED, YEAR, DROPPED, KEPT, EMPTIED = "pseudonymised", "shifted", "cut to year", "dropped", "kept", "emptied"

#: Options of PS3.15 Annex E that describe what is kept or transformed.
OPTION_NOTES = {
    "hex": "Basic Profile: identifier replaced by a keyed pseudonym",
    "uid": "Basic Profile: UID replaced (2.25 form; Retain UIDs Option not used)",
    "shift": "Retain Longitudinal Temporal Information with Modified Dates Option",
    "year": "Basic Profile: dates modified (year kept)",
    "drop": "Basic Profile: dates removed",
    "age": "Retain Patient Characteristics Option (age over 89 set to 90)",
    "kept": "Retain Patient Characteristics Option",
}

#: Where :data:`ANNEX_E` comes from.
ANNEX_E_SOURCE = (
    "DICOM PS3.15 2024b, Annex E, Table E.1-1 (Application Level Confidentiality Profile Attributes), "
    "https://dicom.nema.org/medical/dicom/2024b/output/chtml/part15/chapter_E.html#table_E.1-1; "
    "tags turned into keywords with pydicom's data dictionary; repeating groups (curves, overlays) "
    "have no keyword and are left out"
)
# Basic Profile action code -> the keywords of the attributes it applies to.
# D: replace with a dummy value; Z: zero length or dummy; X: remove; U: replace
# the UID consistently; A/B: the action depends on the IOD (X/Z/U* for sequences).
_ANNEX_E_TEXT = {
    "D": """
        AcquisitionFieldOfViewLabel AnnotationGroupLabel AnnotationGroupUID AssertionDateTime
        AttributeModificationDateTime BeamHoldTransitionDateTime CertificateOfSigner
        ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolID ClinicalTrialSponsorName
        ClinicalTrialSubjectID ClinicalTrialSubjectReadingID ContainerIdentifier ContentSequence
        ContextGroupLocalVersion ContextGroupVersion Date DateTime DecayCorrectionDateTime DestinationAE
        DeviceLabel DigitalSignatureDateTime EffectiveDateTime EncapsulatedDocument EntityLabel
        EntityLongLabel ExclusionStartDateTime FlowIdentifier FlowIdentifierSequence FrameAcquisitionDateTime
        FrameOriginTimestamp FrameReferenceDateTime FunctionalSyncPulse GraphicAnnotationSequence
        HangingProtocolCreationDateTime ImpedanceMeasurementDateTime InformationIssueDateTime
        InterlockDateTime InterlockDescription InterlockOriginDescription ModifyingSystem OverrideDateTime
        PersonIdentificationCodeSequence PersonName RTPlanLabel RTPrescriptionLabel RTToleranceSetLabel
        RadiationDoseIdentificationLabel RadiationDoseInVivoMeasurementLabel RadiationGenerationModeLabel
        ReasonForTheAttributeModification RecordedRTControlPointDateTime ReferencedDateTime
        SafePositionExitDate SafePositionExitTime SafePositionReturnDate SafePositionReturnTime
        SelectorAEValue SelectorASValue SelectorDAValue SelectorDTValue SelectorLOValue SelectorLTValue
        SelectorOBValue SelectorPNValue SelectorSHValue SelectorSTValue SelectorTMValue SelectorUNValue
        SelectorURValue SelectorUTValue SourceEndDateTime SourceIdentifier SourceStartDateTime
        SourceStrengthReferenceDate SourceStrengthReferenceTime SpecimenIdentifier StructureSetLabel Time
        TreatmentControlPointDate TreatmentControlPointTime TreatmentPositionGroupLabel
        TreatmentToleranceViolationDateTime TreatmentToleranceViolationDescription UserContentLabel
        UserContentLongLabel VerificationDateTime VerifyingObserverName VerifyingObserverSequence
        VerifyingOrganization XRayDetectorID XRaySourceID
    """,
    "Z": """
        AccessionNumber CalibrationDateTime ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolName
        ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialTimePointID
        ConceptualVolumeCombinationDescription ConceptualVolumeDescription ConsultingPhysicianName
        DeviceAlternateIdentifier FillerOrderNumberImagingServiceRequest FractionationNotes
        IssuerOfTheContainerIdentifierSequence IssuerOfTheSpecimenIdentifierSequence
        ManufacturerDeviceIdentifier ParticipationDateTime PatientBirthDate PatientName PatientSex
        PlacerOrderNumberImagingServiceRequest PrescriptionNotes PrescriptionNotesSequence ROIInterpreter
        ROIName RTAccessoryDeviceSlotID RTAccessoryHolderSlotID RTPhysicianIntentNarrative
        RadiationGenerationModeDescription ReasonForSuperseding ReferringPhysicianName ReviewDate ReviewTime
        SourceOfPreviousValues SpecimenPreparationSequence StructureSetDate StructureSetTime StudyDate StudyID
        StudyTime TreatmentTechniqueNotes VerifyingObserverIdentificationCodeSequence
    """,
    "X": """
        AcquisitionComments AcquisitionProtocolDescription ActualHumanPerformersSequence
        AdditionalPatientHistory AddressTrial AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence
        AdmittingDiagnosesDescription AdmittingTime AffectedSOPInstanceUID Allergies
        AnnotationGroupDescription ApprovalStatusDateTime Arbitrary AssertionExpirationDateTime
        AuthorObserverSequence BeamDescription BolusDescription BranchOfService CalibrationDate
        CalibrationTime CameraOwnerName CassetteID CertifiedTimestamp
        ClinicalTrialProtocolEthicsCommitteeApprovalNumber ClinicalTrialSeriesDescription
        ClinicalTrialSeriesID ClinicalTrialTimePointDescription CommentsOnRadiationDose
        CommentsOnThePerformedProcedureStep CompensatorDescription
        ConfidentialityConstraintOnPatientDataDescription ConsultingPhysicianIdentificationSequence
        ContainerComponentID ContainerDescription ContentCreatorIdentificationCodeSequence
        ContrastBolusStartTime ContrastBolusStopTime ContributionDateTime ContributionDescription
        CountryOfResidence CreationDate CreationTime CurrentObserverTrial CurrentPatientLocation CurveDate
        CurveTime CustodialOrganizationSequence DataSetTrailingPadding DateOfDocumentOrVerbalTransactionTrial
        DateOfInstallation DateOfLastCalibration DateOfManufacture DateOfSecondaryCapture
        DateTimeOfLastCalibration DecompositionDescription DerivationDescription DeviceDescription
        DeviceSettingDescription DigitalSignaturesSequence DischargeDate DischargeDiagnosisDescription
        DischargeTime DisplacementReferenceLabel DistributionAddress DistributionName DoseReferenceDescription
        EntityDescription EntityName EquipmentFrameOfReferenceDescription
        EthicsCommitteeApprovalEffectivenessEndDate EthicsCommitteeApprovalEffectivenessStartDate EthnicGroup
        ExpectedCompletionDateTime FilterLookupTableDescription FindingsGroupRecordingDateTrial
        FindingsGroupRecordingTimeTrial FixationDeviceDescription FractionGroupDescription FrameComments
        GPSAltitude GPSAltitudeRef GPSAreaInformation GPSDOP GPSDateStamp GPSDestBearing GPSDestBearingRef
        GPSDestDistance GPSDestDistanceRef GPSDestLatitude GPSDestLatitudeRef GPSDestLongitude
        GPSDestLongitudeRef GPSDifferential GPSImgDirection GPSImgDirectionRef GPSLatitude GPSLatitudeRef
        GPSLongitude GPSLongitudeRef GPSMapDatum GPSMeasureMode GPSProcessingMethod GPSSatellites GPSSpeed
        GPSSpeedRef GPSStatus GPSTimeStamp GPSTrack GPSTrackRef GPSVersionID GantryID GeneratorID
        HL7DocumentEffectiveTime HumanPerformerName HumanPerformerOrganization IconImageSequence
        IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
        InstanceCoercionDateTime InstanceOriginStatus InstitutionAddress InstitutionalDepartmentName
        InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification IntendedFractionStartTime
        IntendedRecipientsOfResultsIdentificationSequence InterpretationApprovalDate
        InterpretationApprovalTime InterpretationApproverSequence InterpretationAuthor
        InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer InterpretationRecordedDate
        InterpretationRecordedTime InterpretationRecorder InterpretationText InterpretationTranscriber
        InterpretationTranscriptionDate InterpretationTranscriptionTime InterventionDrugStartTime
        InterventionDrugStopTime IssueDateOfImagingServiceRequest IssueTimeOfImagingServiceRequest
        IssuerOfAdmissionID IssuerOfAdmissionIDSequence IssuerOfClinicalTrialProtocolID
        IssuerOfClinicalTrialSeriesID IssuerOfClinicalTrialSiteID IssuerOfClinicalTrialSubjectID
        IssuerOfClinicalTrialSubjectReadingID IssuerOfClinicalTrialTimePointID IssuerOfPatientID
        IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence LastMenstrualDate LensMake LensModel
        LensSerialNumber LensSpecification LongDeviceDescription MAC MakerNote MedicalAlerts
        MedicalRecordLocator MilitaryRank ModifiedAttributesSequence ModifiedImageDate
        ModifiedImageDescription ModifiedImageTime ModifyingDeviceID MultienergyAcquisitionDescription
        NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults NetworkID
        NonconformingDataElementValue NonconformingModifiedAttributesSequence ObservationDateTrial
        ObservationStartDateTime ObservationTimeTrial Occupation OrderCallbackPhoneNumber
        OrderCallbackTelecomInformation OrderEnteredBy OrderEntererLocation OriginalAttributesSequence
        Originator OtherClinicalTrialProtocolIDsSequence OtherPatientIDs OtherPatientIDsSequence
        OtherPatientNames OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge
        PatientBirthName PatientBirthTime PatientComments PatientInstitutionResidence
        PatientInsurancePlanCodeSequence PatientMotherBirthName PatientPrimaryLanguageCodeSequence
        PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference PatientSetupPhotoDescription
        PatientSize PatientState PatientTelecomInformation PatientTelephoneNumbers
        PatientTransportArrangements PatientTreatmentPreparationMethodDescription
        PatientTreatmentPreparationProcedureParameterDescription PatientWeight PerformedLocation
        PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndDateTime
        PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
        PerformedProcedureStepStartDateTime PerformedProcedureStepStartTime PerformedStationAETitle
        PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
        PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress
        PersonTelecomInformation PersonTelephoneNumbers PhysicianApprovingInterpretation PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID
        PositionAcquisitionTemplateDescription PositionAcquisitionTemplateName PreMedication PregnancyStatus
        PrescriptionDescription PresentationCreationDate PresentationCreationTime
        PriorTreatmentDoseDescription ProcedureStepCancellationDateTime ProductExpirationDateTime
        PyramidDescription PyramidLabel ROICreatorSequence ROIDateTime ROIDescription ROIGenerationDescription
        ROIInterpreterSequence ROIObservationDateTime ROIObservationDescription ROIObservationLabel
        RTPlanDescription RTPlanName RadiopharmaceuticalStartDateTime RadiopharmaceuticalStartTime
        RadiopharmaceuticalStopDateTime RadiopharmaceuticalStopTime ReasonForOmissionDescription
        ReasonForRequestedProcedureCodeSequence ReasonForStudy ReasonForTheImagingServiceRequest
        ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence ReceivingAE
        ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence ReferencedPatientPhotoSequence
        ReferencedPatientSequence ReferencedSOPInstanceMACSequence ReferringPhysicianAddress
        ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers RegionOfResidence
        RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments RequestedProcedureID
        RequestedProcedureLocation RequestedSeriesDescription RequestingAE RequestingPhysician
        RequestingService RespiratoryMotionCompensationTechniqueDescription ResponsibleOrganization
        ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsID ResultsIDIssuer
        RetrieveAETitle SOPAuthorizationDateTime ScheduledAdmissionDate ScheduledAdmissionTime
        ScheduledDischargeDate ScheduledDischargeTime ScheduledHumanPerformersSequence
        ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
        ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
        ScheduledProcedureStepEndTime ScheduledProcedureStepExpirationDateTime ScheduledProcedureStepID
        ScheduledProcedureStepLocation ScheduledProcedureStepModificationDateTime
        ScheduledProcedureStepStartDate ScheduledProcedureStepStartDateTime ScheduledProcedureStepStartTime
        ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
        ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
        ScheduledStudyStartDate ScheduledStudyStartTime ScheduledStudyStopDate ScheduledStudyStopTime
        SeriesDescription ServiceEpisodeDescription ServiceEpisodeID SetupTechniqueDescription
        ShieldingDeviceDescription SlideIdentifier SmokingStatus SourceManufacturer SpecialNeeds
        SpecimenAccessionNumber SpecimenDetailedDescription SpecimenShortDescription StationAETitle
        StructureSetDescription StructureSetName StudyArrivalDate StudyArrivalTime StudyComments
        StudyCompletionDate StudyCompletionTime StudyDescription StudyIDIssuer StudyReadDate StudyReadTime
        StudyVerifiedDate StudyVerifiedTime SubstanceAdministrationDateTime TelephoneNumberTrial
        TemplateLocalVersion TemplateVersion TextComments TextString
        TimeOfDocumentCreationOrVerbalTransactionTrial TimeOfLastCalibration TimeOfSecondaryCapture
        TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle
        TransducerIdentificationSequence TreatmentSites UDISequence UniqueDeviceIdentifier
        VerbalSourceIdentifierCodeSequenceTrial VerbalSourceTrial VisitComments WaveformFilterDescription
        XRayDetectorLabel
    """,
    "U": """
        AcquisitionUID ConcatenationUID ConceptualVolumeUID ConstituentConceptualVolumeUID DeviceUID
        DigitalSignatureUID DimensionOrganizationUID DoseReferenceUID DosimetricObjectiveUID
        FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID InstanceCreatorUID IrradiationEventUID
        LargePaletteColorLookupTableUID ManufacturerDeviceClassUID MediaStorageSOPInstanceUID
        MultiplexGroupUID ObservationSubjectUIDTrial ObservationUID PaletteColorLookupTableUID PatientSetupUID
        PresentationDisplayCollectionUID PresentationSequenceCollectionUID PyramidUID RTTreatmentPhaseUID
        ReferencedConceptualVolumeUID ReferencedDoseReferenceUID ReferencedDosimetricObjectiveUID
        ReferencedFiducialsUID ReferencedFrameOfReferenceUID
        ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedObservationUIDTrial
        ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile ReferencedTreatmentPositionGroupUID
        RelatedFrameOfReferenceUID RequestedSOPInstanceUID SOPInstanceUID SeriesInstanceUID
        SourceConceptualVolumeUID SourceFrameOfReferenceUID SpecimenUID StorageMediaFileSetUID
        StudyInstanceUID SynchronizationFrameOfReferenceUID TargetUID TemplateExtensionCreatorUID
        TemplateExtensionOrganizationUID TrackingUID TransactionUID TreatmentPositionGroupUID
        TreatmentSessionUID UID
    """,
    "Z/D": """
        ContentCreatorName ContentDate ContentTime ContrastBolusAgent InstructionPerformedDateTime PatientID
    """,
    "X/Z": """
        AcquisitionContextSequence AcquisitionDate AcquisitionTime BarcodeValue LabelText PatientSexNeutered
        ReferencedStudySequence RequestedProcedureDescription ReviewerName SourceSerialNumber
        TreatmentMachineName
    """,
    "X/D": """
        AcquisitionDeviceProcessingDescription DateOfLastDetectorCalibration DetectorID EndAcquisitionDateTime
        FirstTreatmentDate InstanceCreationDate IntendedPhaseEndDate IntendedPhaseStartDate
        MostRecentTreatmentDate ObservationDateTime OperatorIdentificationSequence ProtocolName RTPlanDate
        RTPlanTime RTTreatmentApproachLabel SeriesDate SeriesTime StartAcquisitionDateTime
        TimeOfLastDetectorCalibration TreatmentDate TreatmentSite TreatmentTime
    """,
    "X/Z/D": """
        AcquisitionDateTime DeviceSerialNumber InstanceCreationTime InstitutionCodeSequence InstitutionName
        OperatorsName ReferencedPerformedProcedureStepSequence StationName
    """,
    "X/Z/U*": """
        ReferencedImageSequence SourceImageSequence
    """,
}
#: DICOM keyword -> its Basic Profile action code in PS3.15 Annex E (see :data:`ANNEX_E_SOURCE`).
ANNEX_E: dict[str, str] = {kw: action for action, text in _ANNEX_E_TEXT.items() for kw in text.split()}
#: Attributes the Retain Patient Characteristics Option keeps (action K in its column).
RETAIN_PATIENT_CHARACTERISTICS = frozenset(
    {"PatientAge", "PatientSex", "PatientSexNeutered", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus", "PregnancyStatus"}
)
_ACTION_WORDS = {"D": "dummy", "Z": "zero-length", "X": "remove", "U": "replace UID", "U*": "replace UIDs"}


class MissingKeyError(MdprepError):
    """No usable pseudonymisation key."""

    code = "no_key"


# ----------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A new key: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(MIN_KEY_BYTES)


def write_key_file(path: str | os.PathLike) -> None:
    """Write a new key to ``path`` with permissions 0600; refuses to overwrite a file.

    The write is atomic: a failure (disk full, interrupted) leaves no empty or partial
    key file behind, and a file that appears meanwhile is never replaced.
    """
    p = os.fspath(path)
    try:
        with atomic_write(p, mode=0o600, exclusive=True) as tmp:
            tmp.write_text(generate_key() + "\n", encoding="ascii")
    except FileExistsError:
        raise UsageError(f"{p} already exists; keygen never overwrites a key (losing it makes old pseudonyms unmatchable)") from None


_PASSPHRASE = re.compile(r"[\W\d_]*([A-Z]?[a-z]{2,}|[A-Z]{2,})([\W_]+\d*[\W_]*([A-Z]?[a-z]{2,}|[A-Z]{2,})){2,}[\W\d_]*")
#: Three or more words (each with a vowel) run together (``MyHospitalSecretKey2024``), digits or punctuation anywhere.
_RUN_TOGETHER = re.compile(r"[\W\d_]*(?:(?:[A-Z]?[a-z]*[aeiouy][a-z]*|[AEIOUY][a-z]*)[\W\d_]*){3,}")


def key_weakness(key: bytes, *, text: bool = False) -> str | None:
    """Why ``key`` is too weak to be a pseudonymisation key, or None when it is fine.

    The checks estimate entropy cheaply, without ever showing the key:

    * at least :data:`MIN_KEY_BYTES` bytes;
    * no repeated block: zlib compresses random bytes by nothing, so a key that
      compresses to under 75% of its length repeats itself;
    * no sequence: the most common difference between neighbouring bytes covers
      at most half of them (``abcdef...``, ``00 01 02 ...`` are refused);
    * no passphrase (``text``): three or more words of letters, apart or run
      together (``MyHospitalSecretKey2024``);
    * enough variety: Shannon entropy of at least 3.5 bits per byte and at least
      :data:`MIN_KEY_BITS` bits in all (length times entropy per byte).

    A plug-in entropy estimate from 32 to 64 symbols cannot exceed log2 of their
    number, so random base64 or alphanumeric text of 32 to 44 characters scores
    4.3 to 5 bits per character; 3.5 bits per byte refuses small alphabets (hex
    text read as text, a handful of letters) without refusing random keys.

    >>> key_weakness(bytes.fromhex(generate_key())) is None
    True
    >>> key_weakness(b"0123456789abcdef" * 4)
    'it repeats a block'
    """
    n = len(key)
    if n < MIN_KEY_BYTES:
        return f"it holds {n} bytes; at least {MIN_KEY_BYTES} are needed"
    if len(zlib.compress(key, 9)) - 11 < 0.75 * n:
        return "it repeats a block"
    steps = collections.Counter((b - a) % 256 for a, b in zip(key, key[1:]))
    if steps.most_common(1)[0][1] > (n - 1) / 2:
        return "it is a sequence"
    if text and any(p.fullmatch(key.decode("ascii", "replace")) for p in (_PASSPHRASE, _RUN_TOGETHER)):
        return "it looks like a passphrase (words are far less random than they look)"
    counts = np.array(list(collections.Counter(key).values()), dtype=float)
    bits_per_byte = float(-(counts / n * np.log2(counts / n)).sum())
    if bits_per_byte < 3.5 or bits_per_byte * n < MIN_KEY_BITS:
        return (
            f"it uses few distinct values (about {math.floor(bits_per_byte * n)} bits of entropy by a "
            f"Shannon estimate; at least {MIN_KEY_BITS} are needed)"
        )
    return None


def parse_key(material: bytes | str, *, source: str) -> bytes:
    """Key bytes from hex text (64+ characters) or raw material of at least 32 random bytes.

    Refuses keys that are short, repeat a block, form a sequence, read as a
    passphrase or use few distinct values (see :func:`key_weakness`). The error
    names ``source``, never the key.
    """
    raw = material.encode() if isinstance(material, str) else material
    # Text (keygen's hex, base64) loses its surrounding whitespace; binary keys are taken byte for byte.
    text = raw.strip() if all(32 <= b < 127 for b in raw.strip()) else raw
    try:
        decoded = bytes.fromhex(text.decode("ascii")) if len(text) % 2 == 0 else None
    except (UnicodeDecodeError, ValueError):
        decoded = None
    key = decoded if decoded is not None else text
    printable = decoded is None and all(32 <= b < 127 for b in key)
    problem = key_weakness(key, text=printable)
    if problem:
        kind = "hex key" if decoded is not None else "key"
        raise MissingKeyError(
            f"the {kind} from {source} is too short or too regular: {problem}. "
            f"Create one with `mdprep keygen -o KEYFILE` ({MIN_KEY_BYTES} random bytes)",
            source=source,
        )
    return key


def check_key(key: bytes) -> None:
    """Refuse a key that is not bytes, or that is short or regular, as :func:`parse_key` refuses such key files.

    The library's own check of a key handed to :func:`pseudonymize` in Python; the error
    never shows the key.

    >>> import hashlib
    >>> check_key(hashlib.sha256(b"x").digest())
    >>> check_key(b"a")
    Traceback (most recent call last):
    ...
    mdprep.pseudonyms.MissingKeyError: the key given is too short or too regular: ...
    """
    if not isinstance(key, (bytes, bytearray)):
        raise UsageError(
            f"the key must be bytes, not {type(key).__name__}: read a key file with mdprep.pseudonyms.load_key(path), "
            "or its text with mdprep.pseudonyms.parse_key(text, source=...)"
        )
    problem = key_weakness(bytes(key))
    if problem:
        raise MissingKeyError(
            f"the key given is too short or too regular: {problem}. Create one with `mdprep keygen -o KEYFILE` "
            f"({MIN_KEY_BYTES} random bytes) and read it with mdprep.pseudonyms.load_key",
            source="argument",
        )


def load_key(key_file: str | None = None) -> bytes:
    """The key from ``key_file`` or ``$MDPREP_PSEUDONYM_KEY``; refuses to run without one."""
    if key_file:
        try:
            with open(key_file, "rb") as fh:
                return parse_key(fh.read(), source=key_file)
        except FileNotFoundError:
            raise MissingKeyError(f"key file {key_file!r} does not exist; create one with `mdprep keygen -o {key_file}`") from None
    env = os.environ.get(KEY_ENV)
    if env:
        return parse_key(env, source=f"${KEY_ENV}")
    raise MissingKeyError(
        f"no pseudonymisation key: pass --key-file FILE or set {KEY_ENV}; create a key with `mdprep keygen -o KEYFILE`. "
        "mdprep never falls back to an unkeyed or random hash"
    )


def key_fingerprint(key: bytes) -> str:
    """An HMAC of a fixed string: identifies the key without revealing it."""
    return hmac.new(key, b"mdprep key fingerprint v1", hashlib.sha256).hexdigest()[:16]


# ----------------------------------------------------------------------------- pseudonyms


def _digest(key: bytes, namespace: str, value: str) -> bytes:
    return hmac.digest(key, namespace.encode() + b"\0" + value.encode("utf-8", "surrogateescape"), "sha256")


def hex_pseudonym(key: bytes, namespace: str, value: str) -> str:
    """A 20-character hex pseudonym of ``value`` in ``namespace``."""
    return _digest(key, namespace, value).hex()[:HEX_LENGTH]


def uid_pseudonym(key: bytes, namespace: str, value: str) -> str:
    """A valid DICOM UID ``2.25.<decimal>`` of at most 64 characters.

    >>> u = uid_pseudonym(b"k" * 32, "sop_uid", "1.2.3")
    >>> u.startswith("2.25.") and len(u) <= 64 and u[5] != "0"
    True
    """
    number = str(int.from_bytes(_digest(key, namespace, value), "big"))
    return ("2.25." + number.lstrip("0"))[:64]


_IMAGE_EXTENSION = re.compile(r"\.(dcm|dicom|ima|png|jpe?g|tiff?|bmp|j2k|jp2|npy|npz|nii(\.gz)?)$", re.IGNORECASE)


def path_pseudonym(key: bytes, path: str, *, namespace: str = "path") -> str:
    """``<hex>.<extension>``: a keyed pseudonym of ``path`` that keeps a known image extension.

    >>> p = path_pseudonym(b"k" * 32, "PAT001/study1/img1.dcm")
    >>> len(p), p.endswith(".dcm")
    (24, True)
    """
    m = _IMAGE_EXTENSION.search(path)
    return hex_pseudonym(key, namespace, path) + (m.group(0) if m else "")


def map_distinct(values: pd.Series, fn) -> pd.Series:
    """``fn`` applied once per distinct value of ``values`` (pseudonyms are costly HMACs), broadcast back to the rows."""
    codes, uniques = pd.factorize(values)
    mapped = np.array([fn(str(u)) for u in np.asarray(uniques, dtype=object)], dtype=object)
    out = np.where(codes >= 0, mapped[np.maximum(codes, 0)] if len(mapped) else None, None)
    return pd.Series(out, index=values.index, dtype="str")


def date_shift_days(key: bytes, patient: str) -> int:
    """The keyed per-patient offset in days: -365 to -1 or 1 to 365, never 0.

    >>> all(date_shift_days(b"k" * 32, str(p)) != 0 for p in range(2000))
    True
    """
    n = int.from_bytes(_digest(key, "date-shift", patient)[:8], "big")
    days = n % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS
    return days + 1 if days >= 0 else days


# ----------------------------------------------------------------------------- columns -> DICOM attributes


@functools.lru_cache(maxsize=1)
def _keywords_by_column() -> dict[str, str]:
    """Manifest column name (the keyword in snake case, as ingest names it) -> DICOM keyword."""
    from pydicom.datadict import keyword_dict

    from .dicom_header import _snake

    return {_snake(kw): kw for kw in keyword_dict}


def normalise_column(name: str) -> str:
    """A column name in snake case: ``Patient Name`` and ``PatientName`` -> ``patient_name``.

    >>> normalise_column("PatientBirthName"), normalise_column("E-mail address"), normalise_column("other_patient_ids")
    ('patient_birth_name', 'e_mail_address', 'other_patient_ids')
    """
    from .dicom_header import _snake

    return re.sub(r"[^a-z0-9]+", "_", _snake(str(name)).lower()).strip("_")


def dicom_attribute(column: str) -> tuple[str, str] | None:
    """The DICOM ``(keyword, VR)`` a manifest column stands for, or None.

    Matches the column name against every keyword of pydicom's data dictionary in
    snake case, so ``ingest dicom --tags OtherPatientIDs`` (column
    ``other_patient_ids``) and a table column ``PatientBirthName`` both map back.

    >>> dicom_attribute("other_patient_ids"), dicom_attribute("Acquisition Date Time")
    (('OtherPatientIDs', 'LO'), ('AcquisitionDateTime', 'DT'))
    >>> dicom_attribute("Patient's Birth Date"), dicom_attribute("SOP Instance UID"), dicom_attribute("grade")
    (('PatientBirthDate', 'DA'), ('SOPInstanceUID', 'UI'), None)
    """
    from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

    keyword = _keywords_by_column().get(normalise_column(column))
    if keyword is None:
        # An attribute name as DICOM dumps print it ("Patient's Birth Date", "Operators' Name", "Physician(s) of Record").
        words = re.split(r"[^0-9A-Za-z]+", re.sub(r"'s\b|'|\(|\)", "", str(column)))
        keyword = "".join(w[:1].upper() + w[1:] for w in words if w)
        if keyword not in keyword_dict:
            return None

    try:
        vr = dictionary_VR(tag_for_keyword(keyword)).split(" or ")[0]
    except KeyError:  # pragma: no cover - every dictionary keyword has a VR
        vr = "UN"
    return keyword, vr


# ----------------------------------------------------------------------------- column plan

_PRIVATE_TAG = re.compile(r"tag_([0-9a-f]{4})[0-9a-f]{4}")
_PERSON_WORDS = frozenset(
    "surname surnames forename forenames given givenname firstname lastname fullname middlename familyname maiden maidenname "
    "initials physician physicians doctor radiologist technologist nurse operator operators".split()
)
# "name" counts only beside a word that makes it a person's (class_name, file_name, study_name do not).
_PERSON_QUALIFIERS = frozenset(
    "patient patients pt pat person subject first last full given family middle maiden birth mother father sur fore "
    "referring requesting performing reading reporting physician physicians doctor dr operator operators nurse "
    "technologist radiologist consultant clinician attending provider contact kin user owner staff author".split()
)
_NUMBER_WORDS = frozenset("no nr num number numbers id ids".split())
_RECORD_WORDS = frozenset("mrn mrns ur urn nhs ssn insurance medicare medicaid passport record records chart".split())


def _words(col: str) -> tuple[str, ...]:
    """The words of a column name, split at non-alphanumerics and camelCase: ``PatientFirstName`` -> patient, first, name.

    >>> _words("PatientFirstName"), _words("Accession No"), _words("hosp_no"), _words("UR")
    (('patient', 'first', 'name'), ('accession', 'no'), ('hosp', 'no'), ('ur',))
    """
    return tuple(w for w in normalise_column(col).split("_") if w)


def _person_name(w: tuple[str, ...]) -> bool:
    names = {"name", "names"} & set(w)
    return bool(_PERSON_WORDS & set(w)) or (bool(names) and (len(w) == 1 or bool(_PERSON_QUALIFIERS & set(w))))


def _record_number(w: tuple[str, ...]) -> bool:
    words, numbered = set(w), bool(_NUMBER_WORDS & set(w))
    return bool(
        _RECORD_WORDS & words
        or ({"hosp", "hospital", "mr", "licence", "license"} & words and numbered)
        or {"social", "security"} <= words
        or {"national", "id"} <= words
        or "driver" in words and {"licence", "license"} & words
    )


def _accession(w: tuple[str, ...]) -> bool:
    return any(x.startswith("accession") for x in w) or ("acc" in w and bool(_NUMBER_WORDS & set(w)))


# What a column's name says it holds (a direct identifier), tested on the words of the name in this order.
_DIRECT = {
    "a person's name": _person_name,
    "a record number": _record_number,
    "an e-mail address": lambda w: bool({"email", "emails"} & set(w)) or ("e", "mail") in zip(w, w[1:]) or {"mail", "address"} <= set(w),
    "an address": lambda w: bool({"address", "addr", "street", "city", "zip", "zipcode", "postcode", "postal"} & set(w)) or ("post", "code") in zip(w, w[1:]),
    "a telephone number": lambda w: bool({"phone", "telephone", "tel", "mobile", "fax"} & set(w)),
}
_FREE_TEXT = re.compile(
    r"_(reports?|notes?|comments?|remarks?|impressions?|narratives?|text|free_text|history|descriptions?|indications?|"
    r"reasons?|summary|findings?|conclusions?)_"
)
_FILE_NAME = re.compile(r"_(file|files|filename|filenames|file_name|path|paths|filepath|file_path|dir|folder|location|url|uri)_")
_OTHER_ID = re.compile(r"_(id|ids|uid|uids|identifier)_$")
# A column named with one of these words holds dates ("time" alone is a time of day: see the TM rule).
_DATE_NAME = frozenset("date dates dt dob birthdate birthdates birthday born datetime timestamp".split())
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_CARET_NAME = re.compile(r"[^\W\d_][\w' .,-]*\^[\w' .,^-]*")


@dataclass(frozen=True)
class _Step:
    column: str
    treatment: str
    reason: str
    how: str = ""  # hex, uid, path, file, date, dt, age, drop, keep, empty, refuse
    attribute: str = ""  # the DICOM keyword the column stands for, if any


def _is_text(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.ArrowDtype):
        return pa.types.is_string(s.dtype.pyarrow_dtype) or pa.types.is_large_string(s.dtype.pyarrow_dtype)
    return pd.api.types.is_string_dtype(s.dtype) or s.dtype == object


def _is_list(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.ArrowDtype) and pa.types.is_list(s.dtype.pyarrow_dtype)


def _is_temporal(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.ArrowDtype):
        t = s.dtype.pyarrow_dtype
        return pa.types.is_date(t) or pa.types.is_timestamp(t)
    return pd.api.types.is_datetime64_any_dtype(s.dtype)


def _distinct_text(s: pd.Series) -> pd.Series:
    values = pd.Series(pd.unique(s.dropna().astype("str")), dtype="str")
    return values[values.str.strip() != ""]


def _text_dates(s: pd.Series, share: float = 0.8) -> bool:
    """At least ``share`` of the distinct values of a text or integer column read as dates."""
    values = _distinct_text(s.astype("str"))
    if values.empty:
        return False
    return float(read_dates(values)[0].notna().mean()) >= share


def _all_dates(s: pd.Series) -> bool:
    """A text column of any name whose distinct values all read as dates (at least 3 of them, or one per row)."""
    if not _is_text(s):
        return False
    values = _distinct_text(s)
    return (len(values) >= 3 or len(values) == int(s.notna().sum()) > 0) and _text_dates(s, 1.0)


def _content_problem(s: pd.Series, id_values: pa.Array, rows: int) -> tuple[str, str] | None:
    """("drop" or "refuse", why) when the distinct values of a text column look identifying."""
    values = _distinct_text(s)
    if values.empty:
        return None
    if values.str.contains(_EMAIL).any():
        return "drop", "values look like e-mail addresses"
    if values.str.fullmatch(_CARET_NAME).any():
        return "drop", "values look like DICOM person names (Family^Given)"
    if len(id_values) and pc.mean(pc.is_in(pa.array(values.to_numpy(dtype=object), type=pa.string()), value_set=id_values).cast(pa.float64())).as_py() >= 0.5:
        return "drop", "values repeat the patient, study or image identifiers"
    if len(values) <= 100 and len(values) < 0.01 * rows:
        return None  # a small vocabulary repeated over many rows, not notes about individuals
    words = values.str.count(r"\S+")
    if (values.str.len() > 200).any() or (words >= 5).mean() >= 0.2:
        return "refuse", "values look like free text"
    return None


@dataclass(frozen=True)
class _Context:
    """What every column's decision needs to know."""

    frame: pd.DataFrame
    labels: tuple[str, ...]
    hex_cols: frozenset
    uid_cols: frozenset
    keep: frozenset
    drop: frozenset
    id_values: pa.Array
    dates: str
    paths: str
    cap_age: bool


def _plan(
    manifest: Manifest,
    *,
    columns: Sequence[str],
    keep_columns: Sequence[str],
    drop_columns: Sequence[str],
    dates: str,
    paths: str,
    cap_age: bool,
) -> tuple[list[_Step], list[tuple[str, str]]]:
    """One step per column, and the columns refused (free text nobody kept or dropped)."""
    frame = manifest.frame
    ids = [_distinct_text(frame[c]) for c in ("patient_id", "study_id", "accession", "image_id") if c in frame.columns]
    id_list = pd.unique(pd.concat(ids).to_numpy(dtype=object)) if ids else np.array([], dtype=object)
    ctx = _Context(
        frame=frame,
        labels=tuple(manifest.labels),
        hex_cols=frozenset({*HEX_COLUMNS, *(c for c in columns if not c.endswith("uid"))}),
        uid_cols=frozenset({*UID_COLUMNS, *(c for c in columns if c.endswith("uid"))}),
        keep=frozenset(keep_columns),
        drop=frozenset(drop_columns),
        # Short numbers (1, 2048) would match measurements: only distinctive ids count.
        id_values=pa.array([v for v in id_list if len(v) >= 8 or (len(v) >= 4 and not v.isdigit())], type=pa.string()),
        dates=dates,
        paths=paths,
        cap_age=cap_age,
    )
    steps = [replace(_column_step(col, ctx), attribute=(dicom_attribute(col) or ("",))[0]) for col in frame.columns]
    return [s for s in steps if s.how != "refuse"], [(s.column, s.reason) for s in steps if s.how == "refuse"]


def _column_step(col: str, ctx: _Context) -> _Step:
    """The treatment of one column; rules in order, the first that applies wins."""
    s = ctx.frame[col]
    name = "_" + normalise_column(col) + "_"
    words = _words(col)
    keyword, vr = dicom_attribute(col) or (None, None)
    text = _is_text(s)
    if col in ctx.drop:
        return _Step(col, DROPPED, "--drop-columns", "drop")
    if col in ctx.keep:
        return _Step(col, KEPT, "--keep-columns (the user vouches for it)", "keep")
    if col in ctx.labels:
        return _Step(col, KEPT, "label", "keep")
    if col == "path":
        return _Step(col, *_path_step(ctx.frame, ctx.paths))
    if col == INSTANCE_PATHS and _is_list(s):
        return _Step(col, *_instance_paths_step(ctx.frame, ctx.paths))
    if col in ctx.hex_cols:
        return _Step(col, PSEUDONYMISED, OPTION_NOTES["hex"], "hex")
    if col in ctx.uid_cols:
        return _Step(col, PSEUDONYMISED, OPTION_NOTES["uid"], "uid")
    if col == "age" or (keyword == "PatientAge" and pd.api.types.is_numeric_dtype(s.dtype)):
        return _Step(col, KEPT, OPTION_NOTES["age"] if ctx.cap_age else OPTION_NOTES["kept"], "age" if ctx.cap_age else "keep")
    if col in CHARACTERISTICS:
        return _Step(col, KEPT, OPTION_NOTES["kept"], "keep")
    named_date = keyword is None and bool(_DATE_NAME & set(words)) and not _is_list(s) and (text or pd.api.types.is_integer_dtype(s.dtype))
    if _is_temporal(s) or col in DATE_COLUMNS or vr in ("DA", "DT") or named_date:
        return _date_step(col, s, vr, ctx.dates)
    if vr == "TM":
        if ctx.dates == "shift":
            return _Step(col, KEPT, OPTION_NOTES["shift"] + ": a time of day does not move with a whole-day offset", "keep")
        return _Step(col, DROPPED, f"Basic Profile: times removed with --dates {ctx.dates}", "drop")
    if keyword in RETAIN_PATIENT_CHARACTERISTICS:
        return _Step(col, KEPT, OPTION_NOTES["kept"], "keep")
    if keyword in ANNEX_E:
        where = f"PS3.15 Annex E action {ANNEX_E[keyword]}"
        if "U" in ANNEX_E[keyword] and vr == "UI" and text:
            return _Step(col, PSEUDONYMISED, f"{where}: UID replaced (2.25 form)", "uid")
        return _Step(col, DROPPED, f"{where}: removed", "drop")
    private = _PRIVATE_TAG.fullmatch(col)
    if private and int(private.group(1), 16) % 2:
        return _Step(col, DROPPED, "Basic Profile: private attribute removed (Retain Safe Private Option not used)", "drop")
    if text and _accession(words):
        return _Step(col, PSEUDONYMISED, "the column name suggests an accession number: keyed pseudonym (grouping kept)", "hex")
    direct = next((what for what, test in _DIRECT.items() if test(words)), None)
    if direct:
        return _Step(col, DROPPED, f"the column name suggests {direct} (a direct identifier)", "drop")
    if vr != "TM" and _all_dates(s):
        return _date_step(col, s, vr, ctx.dates)
    if keyword is not None:  # a DICOM attribute the standard does not list: only its values can object
        return _by_content(col, s, ctx, "a DICOM attribute PS3.15 Annex E does not list")
    if text and _FILE_NAME.search(name) and paths_with_identifiers(ctx.frame, col).any():
        return _Step(col, PSEUDONYMISED, "file names that spell out an identifier of their row: keyed pseudonym, extension kept", "file")
    if text and _OTHER_ID.search(name):
        return _Step(col, PSEUDONYMISED, "the column name suggests an identifier: keyed pseudonym (grouping kept)", "hex")
    if text and _FREE_TEXT.search(name):
        return _Step(col, "refused", "its name suggests free text", "refuse")
    return _by_content(col, s, ctx, "not an identifier")


def _by_content(col: str, s: pd.Series, ctx: _Context, kept_reason: str) -> _Step:
    problem = _content_problem(s, ctx.id_values, len(ctx.frame)) if _is_text(s) else None
    if problem is None:
        return _Step(col, KEPT, kept_reason, "keep")
    if problem[0] == "drop":
        return _Step(col, DROPPED, problem[1], "drop")
    return _Step(col, "refused", problem[1], "refuse")


def _path_step(frame: pd.DataFrame, paths: str) -> tuple[str, str, str]:
    if paths == "keep":
        return KEPT, "--paths keep", "keep"
    if paths == "drop":
        return EMPTIED, "--paths drop: values removed (the manifest contract keeps the column)", "empty"
    if paths == "pseudonymize":
        return PSEUDONYMISED, "--paths pseudonymize: keyed pseudonym, extension kept", "path"
    n = int(paths_with_identifiers(frame).sum())
    if n:
        return PSEUDONYMISED, f"{n} path(s) spell out an identifier of their row: keyed pseudonym, extension kept", "path"
    return KEPT, "no path spells out an identifier of its row", "keep"


def _instance_paths_step(frame: pd.DataFrame, paths: str) -> tuple[str, str, str]:
    """The treatment of ``instance_paths``: the ``--paths`` policy, applied to each file of the list.

    With ``auto`` the files are pseudonymised when the row's ``path`` is, when any
    of them spells out an identifier of its row, or when a file or folder is named
    by a UID (a series row does not hold its files' SOP Instance UIDs to compare).
    Each file becomes the pseudonym its ``path`` gets in an instance-level manifest.
    """
    if paths == "keep":
        return KEPT, "--paths keep", "keep"
    if paths == "drop":
        return EMPTIED, "--paths drop: every list emptied", "empty_list"
    if paths == "pseudonymize":
        return PSEUDONYMISED, "--paths pseudonymize: each file a keyed pseudonym, extension kept", "paths"
    n = int(instance_paths_with_identifiers(frame).sum())
    if n or ("path" in frame.columns and paths_with_identifiers(frame).any()):
        return PSEUDONYMISED, "files that (or whose folders) spell out an identifier or a UID: each a keyed pseudonym, extension kept", "paths"
    return KEPT, "no file spells out an identifier of its row or a UID", "keep"


def instance_paths_with_identifiers(frame: pd.DataFrame) -> np.ndarray:
    """A mask of the rows one of whose ``instance_paths`` contains an identifier of the row, or a UID as a name."""
    values = pa.array(frame[INSTANCE_PATHS], from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    flat = pc.list_flatten(values).cast(pa.string())
    parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
    hit = pc.fill_null(pc.match_substring_regex(flat, _UID_NAME), False).to_numpy(zero_copy_only=False)
    text = np.asarray(flat.fill_null("").to_numpy(zero_copy_only=False), dtype="U")
    for col in PATH_IDENTIFIERS:
        if col not in frame.columns:
            continue
        ids = frame[col].fillna("").astype("str").to_numpy(dtype="U")[parents]
        hit |= (np.strings.str_len(ids) > 0) & (np.strings.find(text, ids) >= 0)
    out = np.zeros(len(frame), dtype=bool)
    out[parents[hit]] = True
    return out


def _map_list(values: pd.Series, fn) -> tuple[pd.Series, pd.Series, pd.Series]:
    """``fn`` on every element of a list<string> column (once per distinct value): the new column, and the elements before and after."""
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    flat = pc.list_flatten(arr).cast(pa.string())
    before = pd.Series(flat.to_pandas(), dtype="str")
    after = map_distinct(before, fn)
    offsets = np.concatenate([[0], np.cumsum(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False))])
    rebuilt = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(after.to_numpy(dtype=object), type=pa.string()), mask=arr.is_null())
    return pd.Series(pd.arrays.ArrowExtensionArray(rebuilt), index=values.index), before, after


def paths_with_identifiers(frame: pd.DataFrame, column: str = "path") -> np.ndarray:
    """A mask of the rows whose ``path`` (or ``column``) contains one of the row's own identifiers.

    Identifiers are the values of :data:`PATH_IDENTIFIERS` (patient, study, series,
    SOP instance, accession, image id); the test is a vectorised substring search.
    """
    path = frame[column].fillna("").astype("str").to_numpy(dtype="U")
    hit = np.zeros(len(frame), dtype=bool)
    for col in PATH_IDENTIFIERS:
        if col not in frame.columns or col == column:
            continue
        ids = frame[col].fillna("").astype("str").to_numpy(dtype="U")
        hit |= (np.strings.str_len(ids) > 0) & (np.strings.find(path, ids) >= 0)
    return hit


def _date_step(col: str, s: pd.Series, vr: str | None, dates: str) -> _Step:
    if _is_list(s):
        return _Step(col, DROPPED, "multi-valued dates removed", "drop")
    if not (_is_temporal(s) or vr in ("DA", "DT") or col in DATE_COLUMNS or _text_dates(s)):
        return _Step(col, DROPPED, "named like a date but its values do not read as dates: removed", "drop")
    if dates == "drop":
        return _Step(col, DROPPED, OPTION_NOTES["drop"], "drop")
    how = "dt" if vr == "DT" and _is_text(s) else "date"
    note = read_dates(_distinct_text(s))[1] if how == "date" and _is_text(s) else ""
    note = f"; {note}" if note else ""
    if dates == "year":
        return _Step(col, YEAR, OPTION_NOTES["year"] + note, how)
    return _Step(col, SHIFTED, OPTION_NOTES["shift"] + f" (one keyed offset per patient, ±1 to ±{MAX_SHIFT_DAYS} days)" + note, how)


# ----------------------------------------------------------------------------- applying the plan


def _is_birth_date(column: str) -> bool:
    found = dicom_attribute(column)
    return column == "birth_date" or (found is not None and found[0] == "PatientBirthDate") or re.search(r"(^|_)(dob|birth)", normalise_column(column)) is not None


def _over_89(frame: pd.DataFrame, birth_columns: Sequence[str]) -> np.ndarray:
    """Rows whose patient is over 89: by the ``age`` column, or by birth date against any other date of the row."""
    over = np.zeros(len(frame), dtype=bool)
    if "age" in frame.columns:
        over |= (pd.to_numeric(frame["age"], errors="coerce") > 89).fillna(False).to_numpy(dtype=bool)
    others = [c for c in frame.columns if c not in birth_columns and _is_temporal(frame[c])]
    for birth in birth_columns:
        born = _as_datetime(frame[birth])
        for other in others:
            years = (_as_datetime(frame[other]) - born).dt.days / 365.25
            over |= (years > 89).fillna(False).to_numpy(dtype=bool)
    return over


def _hide_birth_dates_over_89(frame: pd.DataFrame, out: dict, steps: list, patients: pd.Series | None) -> list:
    """Birth dates of patients over 89 removed: a (moved) birth date beside a (moved) study date gives the real age.

    Ages over 89 become 90 (the Retain Patient Characteristics Option); keeping the
    birth date would undo that, so it is removed for every row of such a patient.
    """
    births = [st.column for st in steps if st.column in out and st.how in ("date", "dt") and _is_birth_date(st.column)]
    if not births:
        return steps
    over = _over_89(frame, births)
    if patients is not None and over.any():
        over = patients.isin(pd.unique(patients[over])).to_numpy(dtype=bool)
    n = int(pd.unique(patients[over]).size) if patients is not None else int(over.sum())
    if not n:
        return steps
    for col in births:
        out[col] = out[col].mask(over)
    note = f"; removed for {n} patient(s) over 89, whose birth date would give the real age away"
    return [replace(st, reason=st.reason + note) if st.column in births else st for st in steps]


def _as_datetime(s: pd.Series) -> pd.Series:
    if _is_temporal(s):
        return pd.to_datetime(s)
    return parse_dates(s.astype("str"))


def _date32(values: pd.Series) -> pd.Series:
    arr = pa.array(values.to_numpy(dtype="datetime64[D]"), type=pa.date32(), from_pandas=True)
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=values.index)


def _year_start(values: pd.Series) -> pd.Series:
    tz = getattr(values.dt, "tz", None)
    naive = values.dt.tz_localize(None) if tz is not None else values
    start = naive.dt.to_period("Y").dt.start_time
    return start.dt.tz_localize(tz) if tz is not None else start


def _transform_dates(s: pd.Series, how: str, treatment: str, offsets: pd.Series | None) -> tuple[pd.Series, int]:
    """The transformed column and how many present values could not be read (now null)."""
    present = s.notna()
    if how == "dt":
        text = s.astype("str").str.strip()
        day = pd.to_datetime(text.str[:8].where(text.str[:8].str.fullmatch(r"\d{8}")), format="%Y%m%d", errors="coerce")
        if treatment == YEAR:
            out = text.str[:4].where(text.str[:4].str.fullmatch(r"\d{4}"))
        else:
            moved = day + pd.to_timedelta(offsets.to_numpy(), unit="D")
            out = moved.dt.strftime("%Y%m%d").where(day.notna()) + text.str[8:]
        out = out.astype("str")
        return out, int((present & out.isna()).sum())
    values = _as_datetime(s)
    new = _year_start(values) if treatment == YEAR else values + pd.to_timedelta(offsets.to_numpy(), unit="D")
    if _is_temporal(s) and not (isinstance(s.dtype, pd.ArrowDtype) and pa.types.is_date(s.dtype.pyarrow_dtype)):
        out = new.astype(s.dtype) if isinstance(s.dtype, pd.ArrowDtype) else new
    else:
        out = _date32(new)
    return out, int((present & new.isna()).sum())


@dataclass(frozen=True)
class PseudonymResult:
    """What :func:`pseudonymize` made and did.

    Attributes
    ----------
    manifest : Manifest
        The pseudonymised manifest, its history extended by a ``pseudonymize`` step.
    treatments : DataFrame
        One row per column of the input: ``column``, ``treatment`` (pseudonymised,
        shifted, cut to year, dropped, kept, emptied), ``reason`` (the PS3.15 Annex E
        action or option, or the rule that applied) and ``attribute`` (the DICOM
        keyword the column stands for, or empty).
    mapping : DataFrame
        ``column, original, pseudonym`` pairs (only with ``keep_mapping``).
    path_map : DataFrame
        ``path, original_path``: pseudonymised path -> real path (empty unless paths
        were pseudonymised). Private, like the mapping: see :func:`write_path_map`.
    fingerprint : str
        The key's fingerprint.
    """

    manifest: Manifest
    treatments: pd.DataFrame
    mapping: pd.DataFrame
    path_map: pd.DataFrame
    fingerprint: str

    def _by(self, *kinds: str) -> dict[str, str]:
        t = self.treatments[self.treatments["treatment"].isin(kinds)]
        return dict(zip(t["column"], t["reason"]))

    @property
    def transformed(self) -> dict[str, str]:
        """Column -> reason, for the columns whose values were replaced or moved."""
        return self._by(PSEUDONYMISED, SHIFTED, YEAR, EMPTIED)

    @property
    def dropped(self) -> dict[str, str]:
        """Column -> reason, for the columns removed."""
        return self._by(DROPPED)

    @property
    def kept(self) -> tuple[str, ...]:
        """The columns kept as they were (ages capped at 90 included)."""
        return tuple(self._by(KEPT))


@dataclass(frozen=True)
class PseudonymizationState:
    """How many times a manifest was pseudonymised, and with which keys (fingerprints)."""

    passes: int
    fingerprints: tuple[str, ...]

    def describe(self) -> str:
        if not self.passes:
            return "not pseudonymised"
        times = {1: "once", 2: "twice"}.get(self.passes, f"{self.passes} times")
        keys = ", ".join(dict.fromkeys(self.fingerprints))
        return f"pseudonymised {times} (key fingerprint {keys})"


def pseudonymization_state(manifest: Manifest) -> PseudonymizationState:
    """The ``pseudonymize`` steps of the manifest's history.

    >>> pseudonymization_state(Manifest(pd.DataFrame())).describe()
    'not pseudonymised'
    """
    steps = [h for h in manifest.history if h.get("command") == "pseudonymize"]
    return PseudonymizationState(len(steps), tuple(str(h.get("options", {}).get("key_fingerprint")) for h in steps))


def _user_columns(frame: pd.DataFrame, keep: Sequence[str], drop: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in dict.fromkeys([*columns, *keep, *drop]) if c not in frame.columns]
    if missing:
        raise MissingColumnError(missing, list(frame.columns), hint="--columns, --keep-columns and --drop-columns name columns of the manifest")
    problems = []
    both = [c for c in keep if c in drop]
    if both:
        problems.append(f"{examples_text(both, len(both))} named in both --keep-columns and --drop-columns")
    required = [c for c in drop if c in REQUIRED_COLUMNS]
    if required:
        problems.append(f"{examples_text(required, len(required))} cannot be dropped (every manifest needs it; use --paths drop for paths)")
    identifiers = [c for c in keep if c in (*HEX_COLUMNS, *UID_COLUMNS, "path", INSTANCE_PATHS, *columns) or _is_temporal(frame[c]) or c in DATE_COLUMNS]
    if identifiers:
        problems.append(
            f"{examples_text(identifiers, len(identifiers))} cannot be kept raw (identifiers are always pseudonymised, "
            "dates follow --dates, paths follow --paths)"
        )
    if problems:
        raise UsageError("; ".join(problems), columns=both + required + identifiers)


def pseudonymize(
    manifest: Manifest,
    key: bytes,
    *,
    columns: Sequence[str] = (),
    dates: str = "shift",
    cap_age: bool = True,
    keep_mapping: bool = False,
    paths: str = "auto",
    keep_columns: Sequence[str] = (),
    drop_columns: Sequence[str] = (),
) -> PseudonymResult:
    """Replace identifiers with keyed pseudonyms; move dates; drop direct identifiers.

    Parameters
    ----------
    manifest : Manifest
        A manifest never pseudonymised before (a second pass is refused: its ids
        would match no other manifest).
    key : bytes
        The secret key: at least 32 random bytes, as :func:`mdprep.pseudonyms.load_key`
        returns them from a key file written by ``mdprep keygen`` (or
        :func:`mdprep.pseudonyms.parse_key` from the file's text). A short or regular
        key is refused, as on the command line.
    columns : sequence of str
        More identifier columns: hex pseudonyms, or UID pseudonyms for names ending in ``uid``.
    dates : {"shift", "year", "drop"}
        Every date and date-time column: moved by one keyed offset per patient,
        cut to the year, or dropped. Times of day are kept with ``shift`` only.
    cap_age : bool
        Ages over 89 become 90.
    keep_mapping : bool
        Return the original-to-pseudonym pairs in ``mapping``.
    paths : {"auto", "pseudonymize", "keep", "drop"}
        ``auto`` pseudonymises the paths when any path spells out an identifier of
        its row, and keeps them otherwise; ``drop`` empties them.
    keep_columns, drop_columns : sequence of str
        Columns the user keeps as they are, or drops, whatever they look like.

    Returns
    -------
    PseudonymResult
        The manifest, a treatment for every column, the mapping and the path map.

    Raises
    ------
    UsageError
        On a manifest already pseudonymised, on columns that look like free text and
        are neither kept nor dropped, and on contradicting options; on a key that is
        not bytes.
    MissingKeyError
        On a key that is short or regular (:func:`key_weakness`).

    Examples
    --------
    >>> import datetime
    >>> from mdprep.manifest import Manifest
    >>> f = pd.DataFrame({"image_id": ["img1", "img2"], "path": ["a/1.png", "a/2.png"], "patient_id": ["MRN001", "MRN002"],
    ...                   "study_date": [datetime.date(2020, 1, 5), datetime.date(2021, 3, 1)]})
    >>> import hashlib
    >>> key = hashlib.sha256(b"a documentation key; make yours with mdprep keygen").digest()
    >>> r = pseudonymize(Manifest(f), key, keep_mapping=True)
    >>> "MRN001" in set(r.manifest.frame["patient_id"]), r.manifest.frame["patient_id"].str.len().tolist()
    (False, [20, 20])
    >>> sorted(r.mapping.columns)[:2], len(r.mapping) > 0
    (['column', 'original'], True)
    """
    check_key(key)
    if dates not in DATE_POLICIES:
        raise UsageError(f"--dates {dates!r}: choose one of {', '.join(DATE_POLICIES)}")
    if paths not in PATH_POLICIES:
        raise UsageError(f"--paths {paths!r}: choose one of {', '.join(PATH_POLICIES)}")
    state = pseudonymization_state(manifest)
    if state.passes:
        raise UsageError(
            f"this manifest is already {state.describe()}; pseudonymising it again would give ids that match no other "
            "manifest. Pseudonymise the raw manifest instead",
            passes=state.passes,
        )
    frame = manifest.frame
    columns, keep_columns, drop_columns = list(columns), list(keep_columns), list(drop_columns)
    _user_columns(frame, keep_columns, drop_columns, columns)
    if "patient_id" not in frame.columns and dates == "shift":
        raise UsageError("--dates shift needs a patient_id column (one offset per patient)")
    steps, refused = _plan(manifest, columns=columns, keep_columns=keep_columns, drop_columns=drop_columns, dates=dates, paths=paths, cap_age=cap_age)
    if refused:
        names = [c for c, _ in refused]
        why = "; ".join(f"{c!r}: {w}" for c, w in refused[:10])
        raise UsageError(
            f"column(s) {examples_text(names, len(names))} may hold free text that names people ({why}). "
            f"Pass --drop-columns {shlex.quote(','.join(names))} to drop them, or --keep-columns {shlex.quote(','.join(names))} "
            "once you have checked that they identify no one",
            columns=names,
        )
    out: dict[str, pd.Series] = {}  # built once at the end: dropping columns one by one is quadratic
    patients = frame["patient_id"].astype("str") if "patient_id" in frame.columns else None
    offsets = None
    if dates == "shift" and any(s.how in ("date", "dt") for s in steps):
        offsets = map_distinct(patients, lambda p: str(date_shift_days(key, p))).astype("float")
    maps = []
    path_map = pd.DataFrame({"path": pd.Series(dtype="str"), "original_path": pd.Series(dtype="str")})
    final: list[_Step] = []
    for step in steps:
        col, reason = step.column, step.reason
        if step.how in ("keep", "drop"):
            if step.how == "keep":
                out[col] = frame[col]
        elif step.how in ("hex", "uid"):
            before = frame[col].astype("str")
            fn = hex_pseudonym if step.how == "hex" else uid_pseudonym
            after = map_distinct(before, lambda v, c=col, f=fn: f(key, c, v))
            if keep_mapping:
                maps.append(pd.DataFrame({"column": col, "original": before, "pseudonym": after}).dropna().drop_duplicates())
            out[col] = after
        elif step.how in ("path", "file"):
            before = frame[col].astype("str")
            after = map_distinct(before, lambda v, c=col: path_pseudonym(key, v, namespace=c))
            if col == "path":
                pairs = pd.DataFrame({"path": after, "original_path": before})
                path_map = pd.concat([path_map, pairs]).drop_duplicates().sort_values("path", ignore_index=True)
            out[col] = after
        elif step.how == "paths":  # instance_paths: each file as its own path would be
            out[col], before, after = _map_list(frame[col], lambda v: path_pseudonym(key, v, namespace="path"))
            files = pd.DataFrame({"path": after, "original_path": before})
            path_map = pd.concat([path_map, files]).drop_duplicates().sort_values("path", ignore_index=True)
        elif step.how == "empty":
            out[col] = pd.Series("", index=frame.index, dtype="str")
        elif step.how == "empty_list":
            empty = pa.array([[]] * len(frame), type=pa.list_(pa.string()))
            out[col] = pd.Series(pd.arrays.ArrowExtensionArray(empty), index=frame.index)
        elif step.how in ("date", "dt"):
            out[col], unread = _transform_dates(frame[col], step.how, step.treatment, offsets)
            if unread:
                reason += f"; {unread} value(s) that do not read as dates were removed"
                warnings.warn(f"{unread} value(s) of {col!r} do not read as dates and were removed (set to null)", MdprepWarning, stacklevel=2)
        elif step.how == "age":
            capped = frame[col].mask(frame[col] > 89, 90)
            out[col] = capped.astype("float32") if col == "age" else capped
        final.append(replace(step, reason=reason))
    if paths == "keep" and "path" in frame.columns:
        n = int(paths_with_identifiers(frame).sum())
        if INSTANCE_PATHS in frame.columns and _is_list(frame[INSTANCE_PATHS]):
            n = int((paths_with_identifiers(frame) | instance_paths_with_identifiers(frame)).sum())
        if n:
            warnings.warn(
                f"{n} path value(s) spell out an identifier of their row (patient, study, series, instance, accession or image id) "
                "and are kept as given (--paths keep): keep this manifest private, or pseudonymise the paths",
                MdprepWarning,
                stacklevel=2,
            )
    if cap_age and dates != "drop":
        final = _hide_birth_dates_over_89(frame, out, final, patients)
    treatments = pd.DataFrame(
        {
            "column": [s.column for s in final],
            "treatment": [s.treatment for s in final],
            "reason": [s.reason for s in final],
            "attribute": [s.attribute for s in final],
        }
    ).astype("str")
    fingerprint = key_fingerprint(key)

    def by(*kinds: str) -> list[str]:
        return sorted(s.column for s in final if s.treatment in kinds)

    options = {
        "algorithm": ALGORITHM,
        "key_fingerprint": fingerprint,
        "columns": by(PSEUDONYMISED),
        "dates_moved": by(SHIFTED, YEAR),
        "dropped": by(DROPPED),
        "emptied": by(EMPTIED),
        "extra_columns": sorted(columns),
        "keep_columns": sorted(keep_columns),
        "drop_columns": sorted(drop_columns),
        "dates": dates,
        "paths": paths,
        "cap_age": cap_age,
        "annex_e": "PS3.15 2024b Table E.1-1",
    }
    root, history, hidden = _metadata_without_identifiers(manifest, _identifying_values(frame, final), key)
    if hidden:
        options["metadata_hidden"] = hidden
    result = replace(manifest, root=root, history=history)
    result = result.with_frame(pd.DataFrame(out, index=frame.index)).with_step(provenance_step("pseudonymize", options, []))
    mapping = pd.concat(maps, ignore_index=True) if maps else pd.DataFrame(columns=["column", "original", "pseudonym"])
    return PseudonymResult(result, treatments, mapping, path_map, fingerprint)


def _identifying_values(frame: pd.DataFrame, steps: Sequence[_Step]) -> np.ndarray:
    """Every distinct value (3 characters or more) of the columns that were pseudonymised, dropped or moved.

    Dates are included in the forms paths and file names use (``YYYYMMDD``, ``YYYY-MM-DD``).
    """
    hidden = {PSEUDONYMISED, DROPPED, EMPTIED, SHIFTED, YEAR}
    parts = []
    for step in steps:
        if step.treatment not in hidden or step.column not in frame.columns:
            continue
        col = frame[step.column]
        if _is_list(col):
            continue
        if _is_temporal(col):
            when = _as_datetime(col).dropna()
            parts += [when.dt.strftime("%Y%m%d"), when.dt.strftime("%Y-%m-%d")]
        else:
            parts.append(col.dropna().astype("str"))
    if not parts:
        return np.array([], dtype=str)
    values = pd.unique(pd.concat(parts, ignore_index=True).str.strip())
    return np.array([v for v in values if len(v) >= 3], dtype=str)


def _metadata_without_identifiers(manifest: Manifest, identifiers: np.ndarray, key: bytes) -> tuple[str | None, tuple[dict, ...], list[str]]:
    """The manifest's root and history with every text that spells out an identifier hidden.

    A root or an input path named after a patient (``/dump/MRN0001_Smith``) would give
    the identifier away in the Parquet metadata. Such a root is removed (``hash`` and
    ``train`` then need ``--root``); such a history text becomes ``pseudonymised:<hex>``.
    Returns the new root, the new history, and where texts were hidden.
    """

    def spells(text: str) -> bool:
        return bool(len(identifiers)) and bool((np.strings.find(text, identifiers) >= 0).any())

    hidden: list[str] = []

    def clean(value, where: str):
        if isinstance(value, str):
            if spells(value):
                hidden.append(where)
                return "pseudonymised:" + hex_pseudonym(key, "metadata", value)
            return value
        if isinstance(value, list):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}") for k, v in value.items()}
        return value

    root = manifest.root
    if root is not None and spells(root):
        hidden.append("root")
        root = None
        warnings.warn(
            "the image root spells out an identifier and was removed from the manifest's metadata; "
            "pass --root DIR to hash and train",
            MdprepWarning,
            stacklevel=3,
        )
    history = tuple(clean(dict(step), f"history[{i}]") for i, step in enumerate(manifest.history))
    return root, history, hidden


# ----------------------------------------------------------------------------- private files


def write_mapping(mapping: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write original-to-pseudonym pairs as CSV with permissions 0600 (for the data custodian only)."""
    with atomic_write(path, mode=0o600) as tmp:
        mapping.to_csv(tmp, index=False)


def write_path_map(path_map: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the ``path, original_path`` pairs as CSV, atomically, with permissions 0600.

    The file links pseudonymised paths back to real ones (which may spell out
    patient ids): keep it beside the images, never in the repository.
    """
    with atomic_write(path, mode=0o600) as tmp:
        path_map[["path", "original_path"]].to_csv(tmp, index=False)


def load_path_map(path: str | os.PathLike) -> dict[str, str]:
    """Pseudonymised path -> real path, from a file :func:`write_path_map` wrote."""
    p = os.fspath(path)
    try:
        table = pd.read_csv(p, dtype="str", keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"path map {p!r} does not exist; `mdprep pseudonymize --path-map FILE` writes it", path=p) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"path map {p!r} is not a CSV file ({type(exc).__name__}); pass the file --path-map wrote", path=p) from None
    missing = [c for c in ("path", "original_path") if c not in table.columns]
    if missing:
        raise MissingColumnError(missing, list(table.columns), path=p, hint="pass the file `mdprep pseudonymize --path-map` wrote")
    if table.drop_duplicates()["path"].duplicated().any():
        raise InputError(f"path map {p!r} maps one pseudonymised path to several files; it is damaged", path=p)
    return dict(zip(table["path"], table["original_path"]))


def resolve_paths(manifest: Manifest, path_map: Mapping[str, str]) -> Manifest:
    """The manifest with its pseudonymised paths replaced by the real ones, to read the files.

    A series-level manifest's ``instance_paths`` (its files) are resolved too. Use
    the result only to open files (``hash``, ``train``): write outputs from the
    pseudonymised manifest, whose rows are in the same order. Raises
    :class:`InputError` when a path is missing from the map (the error quotes
    pseudonymised paths only).
    """
    frame = manifest.frame
    paths = frame["path"].astype("str")
    real = paths.map(path_map)
    new = {"path": real.astype("str")}
    missing, total = paths[real.isna() & paths.notna()], len(paths)
    if INSTANCE_PATHS in frame.columns and _is_list(frame[INSTANCE_PATHS]):
        # A series-level manifest: its files too (each pseudonymised as its own path would be).
        new[INSTANCE_PATHS], files, found = _map_list(frame[INSTANCE_PATHS], path_map.get)
        missing, total = pd.concat([missing, files[found.isna()]], ignore_index=True), total + len(files)
    if len(missing):
        bad = pd.unique(missing)
        raise InputError(
            f"{len(missing)} of {total} path(s) are not in the path map, for example {examples_text(list(bad), len(bad))}; "
            "pass the path map written when this manifest was pseudonymised",
            missing=len(bad),
        )
    return manifest.with_frame(frame.assign(**new))


def pseudonymised_paths(real_paths: pd.Series, path_map: Mapping[str, str]) -> pd.Series:
    """Real paths back to their pseudonyms (the inverse of :func:`resolve_paths`), for error tables.

    A command that read files through :func:`resolve_paths` reports failures by path;
    this keeps those reports free of real paths. A path the map does not know becomes
    ``<unknown path>``, never itself.
    """
    inverse = {real: pseudo for pseudo, real in path_map.items()}
    return real_paths.astype("str").map(inverse).fillna("<unknown path>").astype("str")


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def redact_quoted(text: str, keep: Iterable[str] = ()) -> str:
    """``text`` with every quoted value replaced by ``'…'``, except the quoted strings in ``keep``.

    Messages quote the values they are about (``'PAT001'``, ``'2020-01-31'``). Once
    pseudonymisation is asked, none of those may reach the screen; column names and the
    user's own option values (``keep``) still may, so the message stays useful.

    >>> redact_quoted("3 value(s) of 'study_date' did not parse: '31/01/2020', 'x'", keep={"study_date"})
    "3 value(s) of 'study_date' did not parse: '…', '…'"
    """
    allowed = set(keep)

    def one(m: re.Match) -> str:
        inner = m.group(0)[1:-1]
        return m.group(0) if inner in allowed else "'…'"

    return _QUOTED.sub(one, text)


# ----------------------------------------------------------------------------- comparing manifests


def manifest_key_fingerprint(manifest: Manifest) -> str | None:
    """The key fingerprint of the last pseudonymisation in the manifest's history, if any."""
    state = pseudonymization_state(manifest)
    return state.fingerprints[-1] if state.passes else None


def check_same_pseudonymization(manifests: Sequence[Manifest], names: Sequence[str]) -> None:
    """Refuse to compare manifests pseudonymised differently.

    Different keys, a different number of passes, or some manifests raw: their ids
    can never match, so an audit would pass for the wrong reason.
    """
    states = {n: pseudonymization_state(m) for m, n in zip(manifests, names)}
    if len(set(states.values())) > 1:
        shown = "; ".join(f"{n}: {s.describe()}" for n, s in states.items())
        raise UsageError(
            f"the manifests were not pseudonymised the same way (different keys or a different number of passes: {shown}); "
            "their ids can never match, so an audit would pass for the wrong reason. Pseudonymise the raw manifests once, "
            "all with one key",
            states={n: [s.passes, list(s.fingerprints)] for n, s in states.items()},
        )


#: The name the command line and older callers use.
check_same_key = check_same_pseudonymization
