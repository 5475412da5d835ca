//! The population's shape: age bands, OMB race and ethnicity, places with
//! real ZIP codes, names, and the condition and drug codes (ICD-10-CM,
//! RxNorm) the patients draw from.

/// Age bands (years, inclusive) and their share of the US population.
pub(super) const AGE_BANDS: &[((u32, u32), f64)] = &[
    ((0, 4), 0.057),
    ((5, 17), 0.163),
    ((18, 24), 0.092),
    ((25, 34), 0.135),
    ((35, 44), 0.130),
    ((45, 54), 0.121),
    ((55, 64), 0.127),
    ((65, 74), 0.100),
    ((75, 84), 0.050),
    ((85, 89), 0.015),
    ((90, 104), 0.010),
];

/// OMB race categories (CDC race codes) and approximate shares.
pub(super) const RACES: &[((&str, &str), f64)] = &[
    (("2106-3", "White"), 0.60),
    (("2054-5", "Black or African American"), 0.13),
    (("2028-9", "Asian"), 0.06),
    (("1002-5", "American Indian or Alaska Native"), 0.011),
    (
        ("2076-8", "Native Hawaiian or Other Pacific Islander"),
        0.002,
    ),
    (("2131-1", "Other Race"), 0.197),
];

/// ZIP code, city, state, area code, weight. Includes 3-digit prefixes whose
/// population is 20,000 or fewer (036, 059, 692, 821, 879, 893), which Safe
/// Harbor requires to be replaced by 000.
/// ZIP code, city, state, telephone area code.
pub(super) type Place = (&'static str, &'static str, &'static str, &'static str);

pub(super) const PLACES: &[(Place, f64)] = &[
    (("10027", "New York", "NY", "212"), 8.0),
    (("90011", "Los Angeles", "CA", "323"), 6.0),
    (("60614", "Chicago", "IL", "312"), 5.0),
    (("77004", "Houston", "TX", "713"), 4.5),
    (("85004", "Phoenix", "AZ", "602"), 3.5),
    (("19104", "Philadelphia", "PA", "215"), 3.0),
    (("78205", "San Antonio", "TX", "210"), 3.0),
    (("92101", "San Diego", "CA", "619"), 3.0),
    (("75201", "Dallas", "TX", "214"), 3.0),
    (("94110", "San Francisco", "CA", "415"), 2.5),
    (("98101", "Seattle", "WA", "206"), 2.5),
    (("80202", "Denver", "CO", "303"), 2.5),
    (("02139", "Cambridge", "MA", "617"), 2.0),
    (("30303", "Atlanta", "GA", "404"), 2.0),
    (("33130", "Miami", "FL", "305"), 2.0),
    (("48201", "Detroit", "MI", "313"), 2.0),
    (("55401", "Minneapolis", "MN", "612"), 1.5),
    (("97201", "Portland", "OR", "503"), 1.5),
    (("37203", "Nashville", "TN", "615"), 1.5),
    (("21201", "Baltimore", "MD", "410"), 1.5),
    (("43215", "Columbus", "OH", "614"), 1.5),
    (("46204", "Indianapolis", "IN", "317"), 1.5),
    (("28202", "Charlotte", "NC", "704"), 1.5),
    (("53202", "Milwaukee", "WI", "414"), 1.0),
    (("87102", "Albuquerque", "NM", "505"), 1.0),
    (("73102", "Oklahoma City", "OK", "405"), 1.0),
    (("64106", "Kansas City", "MO", "816"), 1.0),
    (("84101", "Salt Lake City", "UT", "801"), 1.0),
    (("96813", "Honolulu", "HI", "808"), 0.6),
    (("99501", "Anchorage", "AK", "907"), 0.5),
    (("03601", "Acworth", "NH", "603"), 0.1),
    (("05901", "Averill", "VT", "802"), 0.1),
    (("69201", "Valentine", "NE", "402"), 0.1),
    (("82190", "Yellowstone National Park", "WY", "307"), 0.05),
    (("87901", "Truth or Consequences", "NM", "575"), 0.1),
    (("89301", "Ely", "NV", "775"), 0.1),
];

pub(super) const FEMALE_NAMES: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Margaret",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Maria",
    "Sofia",
    "Mei",
    "Aaliyah",
    "Priya",
];

pub(super) const MALE_NAMES: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "Richard",
    "Joseph",
    "Thomas",
    "Christopher",
    "Charles",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Andrew",
    "Paul",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Jose",
    "Luis",
    "Wei",
    "Malik",
    "Arjun",
];

pub(super) const SURNAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Nguyen",
    "Chen",
    "Patel",
    "Kim",
    "Okafor",
];

pub(super) const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Ave",
    "Lake Rd",
    "Hill St",
    "Park Ave",
    "Sunset Blvd",
    "River Rd",
    "Church St",
    "Highland Ave",
    "Spring St",
    "Mill Rd",
];

/// Conditions: ICD-10-CM code and display.
pub(super) const DIABETES: (&str, &str) =
    ("E11.9", "Type 2 diabetes mellitus without complications");

pub(super) const HYPERTENSION: (&str, &str) = ("I10", "Essential (primary) hypertension");

pub(super) const ASTHMA: (&str, &str) = ("J45.909", "Unspecified asthma, uncomplicated");

pub(super) const HYPERLIPIDEMIA: (&str, &str) = ("E78.5", "Hyperlipidemia, unspecified");

pub(super) const OBESITY: (&str, &str) = ("E66.9", "Obesity, unspecified");

pub(super) const DEPRESSION: (&str, &str) = (
    "F32.9",
    "Major depressive disorder, single episode, unspecified",
);

pub(super) const COPD: (&str, &str) = (
    "J44.9",
    "Chronic obstructive pulmonary disease, unspecified",
);

pub(super) const CKD3: (&str, &str) = ("N18.30", "Chronic kidney disease, stage 3 unspecified");

pub(super) const CAD: (&str, &str) = (
    "I25.10",
    "Atherosclerotic heart disease of native coronary artery without angina pectoris",
);

pub(super) const HYPOTHYROIDISM: (&str, &str) = ("E03.9", "Hypothyroidism, unspecified");

pub(super) const HIV: (&str, &str) = ("B20", "Human immunodeficiency virus [HIV] disease");

/// Medications: RxNorm code and display.
pub(super) const METFORMIN: (&str, &str) = ("861007", "metformin hydrochloride 500 MG Oral Tablet");

pub(super) const LISINOPRIL: (&str, &str) = ("314076", "lisinopril 10 MG Oral Tablet");

pub(super) const AMLODIPINE: (&str, &str) = ("197361", "amlodipine 5 MG Oral Tablet");

pub(super) const HCTZ: (&str, &str) = ("310798", "hydrochlorothiazide 25 MG Oral Tablet");

pub(super) const ATORVASTATIN: (&str, &str) = ("617310", "atorvastatin 20 MG Oral Tablet");

pub(super) const ALBUTEROL: (&str, &str) = (
    "745679",
    "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
);

pub(super) const SERTRALINE: (&str, &str) = ("312940", "sertraline 50 MG Oral Tablet");

/// Observations: LOINC code and display.
pub(super) const HEIGHT: (&str, &str) = ("8302-2", "Body height");

pub(super) const WEIGHT: (&str, &str) = ("29463-7", "Body weight");

pub(super) const BMI: (&str, &str) = ("39156-5", "Body mass index (BMI) [Ratio]");

pub(super) const SYSTOLIC: (&str, &str) = ("8480-6", "Systolic blood pressure");

pub(super) const DIASTOLIC: (&str, &str) = ("8462-4", "Diastolic blood pressure");

pub(super) const HEART_RATE: (&str, &str) = ("8867-4", "Heart rate");

pub(super) const HBA1C: (&str, &str) = ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood");

pub(super) const GLUCOSE: (&str, &str) = ("2339-0", "Glucose [Mass/volume] in Blood");

pub(super) const CHOLESTEROL: (&str, &str) =
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma");

pub(super) const CREATININE: (&str, &str) =
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma");

/// Every ICD-10-CM code the population draws from, with its display (the
/// OMOP vocabulary's concepts; append only: the order fixes local ids).
pub const CONDITION_CODES: [(&str, &str); 11] = [
    DIABETES,
    HYPERTENSION,
    ASTHMA,
    HYPERLIPIDEMIA,
    OBESITY,
    DEPRESSION,
    COPD,
    CKD3,
    CAD,
    HYPOTHYROIDISM,
    HIV,
];

/// Every RxNorm code the population draws from (append only).
pub const MEDICATION_CODES: [(&str, &str); 7] = [
    METFORMIN,
    LISINOPRIL,
    AMLODIPINE,
    HCTZ,
    ATORVASTATIN,
    ALBUTEROL,
    SERTRALINE,
];

/// Every LOINC code the population's observations carry, with its display
/// and whether it is a vital sign (append only).
pub const OBSERVATION_CODES: [((&str, &str), bool); 10] = [
    (HEIGHT, true),
    (WEIGHT, true),
    (BMI, true),
    (SYSTOLIC, true),
    (DIASTOLIC, true),
    (HEART_RATE, true),
    (HBA1C, false),
    (GLUCOSE, false),
    (CHOLESTEROL, false),
    (CREATININE, false),
];

// ------------------------------------------------------------- sampling --
