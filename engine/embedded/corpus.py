"""A deterministic generator of synthetic clinical notes and question/answer pairs.

Everything here is invented for the embedded demo (written for this project, not taken from any
source) and is NOT medical advice. The corpus exists to give two tiny models something learnable:

* ``general`` covers many specialties (respiratory, GI, neurology, orthopaedics, dermatology,
  general practice, ENT, endocrine, mental health) and never mentions the domain specialty.
* ``domain`` covers ONE specialty, cardiology, with its own conditions, drugs, findings and
  conventions (every domain presentation carries an ``ECG:`` field and every domain plan a
  ``Risk:`` grade from the patient's age), none of which ``general`` ever shows.
* the facts are consistent: a condition always has the same first-line treatment and dose, a key
  finding always points to the same diagnosis, so a model can learn them from the data.

Each record is natively ``(instruction, input, output)``; ``render_*`` turn a record into the three
file formats that ``engine.data`` reads. Generation uses only a seeded ``random.Random`` and
ordered tuples, so the same seed always gives the same text (independent of PYTHONHASHSEED).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

DOMAIN_SPECIALTY = "cardiology"


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Condition:
    name: str
    specialty: str
    symptoms: tuple[str, ...]
    finding: str  # the key finding: it always points to this condition
    test: str  # the confirmatory investigation
    treatment: str  # first-line treatment (a drug name or a procedure)
    regimen: str = ""  # dose and schedule when the treatment is a drug
    drug_class: str = ""
    extra: str = ""  # a second plan item
    follow: str = "follow up in 2 weeks"
    ages: tuple[int, int] = (25, 80)
    sexes: tuple[str, ...] = ("man", "woman")
    # vital sign ranges that differ from normal: name -> (low, high)
    vitals: dict[str, tuple[float, float]] = field(default_factory=dict)
    ecg_finding: bool = False  # the key finding is an ECG description

    def plan_drug(self) -> str:
        return f"{self.treatment} {self.regimen}".strip()


NORMAL_VITALS: dict[str, tuple[float, float]] = {
    "sbp": (112, 138),
    "dbp": (68, 86),
    "hr": (62, 90),
    "temp": (36.5, 37.3),
    "spo2": (96, 99),
    "rr": (12, 18),
}

FEVER = {"temp": (37.9, 39.3)}

# fmt: off
GENERAL: tuple[Condition, ...] = (
    # respiratory
    Condition("community-acquired pneumonia", "respiratory",
              ("productive cough", "fever for three days", "pain on deep breathing", "shortness of breath"),
              "crackles and bronchial breathing at the right base", "chest X-ray",
              "amoxicillin", "500 mg three times daily for 5 days", "penicillin antibiotic",
              "encourage oral fluids", "review in 48 hours",
              vitals={"temp": (38.0, 39.4), "hr": (96, 118), "rr": (20, 26), "spo2": (91, 95)}),
    Condition("asthma exacerbation", "respiratory",
              ("wheeze", "night-time cough", "tight chest after a cold"),
              "widespread expiratory wheeze with peak flow at 60% of best", "peak flow measurement",
              "salbutamol", "4 puffs via spacer every 4 hours as needed", "short-acting bronchodilator",
              "check inhaler technique", "follow up in 1 week", ages=(12, 60),
              vitals={"hr": (95, 115), "rr": (20, 28), "spo2": (93, 96)}),
    Condition("COPD exacerbation", "respiratory",
              ("worsening breathlessness", "more sputum than usual", "long smoking history"),
              "prolonged expiration with scattered wheeze", "spirometry once recovered",
              "prednisolone", "30 mg once daily for 5 days", "oral corticosteroid",
              "offer smoking cessation support", "follow up in 1 week", ages=(55, 88),
              vitals={"rr": (20, 26), "spo2": (88, 93)}),
    # gastrointestinal
    Condition("gastro-oesophageal reflux disease", "gastroenterology",
              ("heartburn after meals", "sour taste in the mouth", "symptoms worse when bending over"),
              "mild epigastric tenderness with no guarding", "trial of acid suppression",
              "omeprazole", "20 mg once daily for 4 weeks", "proton pump inhibitor",
              "avoid large late meals", "follow up in 4 weeks"),
    Condition("acute gastroenteritis", "gastroenterology",
              ("watery diarrhoea", "vomiting since yesterday", "crampy abdominal pain"),
              "dry mucous membranes with a soft non-tender abdomen", "stool culture if symptoms persist",
              "oral rehydration solution", "200 mL after each loose stool", "rehydration therapy",
              "advise careful hand hygiene", "review if not improving in 3 days", ages=(5, 70),
              vitals={"hr": (92, 110), "temp": (37.4, 38.2)}),
    Condition("functional constipation", "gastroenterology",
              ("hard infrequent stools", "straining", "bloating"),
              "palpable stool in the left iliac fossa", "clinical diagnosis",
              "macrogol", "one sachet twice daily", "osmotic laxative",
              "increase fibre and fluid intake", "follow up in 4 weeks"),
    Condition("acute appendicitis", "general surgery",
              ("pain that moved to the right lower abdomen", "loss of appetite", "nausea"),
              "tenderness and guarding at McBurney's point", "ultrasound of the abdomen",
              "appendicectomy", "", "", "keep nil by mouth", "refer to the surgical team today",
              ages=(10, 45), vitals={"temp": (37.6, 38.6), "hr": (92, 112)}),
    # neurology
    Condition("migraine", "neurology",
              ("one-sided throbbing headache", "sensitivity to light", "nausea with headaches"),
              "visual aura before each headache with a normal neurological examination", "headache diary",
              "sumatriptan", "50 mg at the onset of headache", "triptan",
              "identify and avoid triggers", "follow up in 6 weeks", ages=(16, 55)),
    Condition("tension-type headache", "neurology",
              ("band-like pressure around the head", "headache worse with stress", "tired neck muscles"),
              "tender pericranial muscles with no focal signs", "clinical diagnosis",
              "ibuprofen", "400 mg three times daily with food for up to 5 days", "NSAID",
              "regular sleep and breaks from screens", "follow up in 4 weeks", ages=(18, 65)),
    Condition("Bell's palsy", "neurology",
              ("sudden droop of one side of the face", "cannot close one eye", "drooling from one corner of the mouth"),
              "lower motor neuron facial weakness that includes the forehead", "clinical diagnosis",
              "prednisolone", "50 mg once daily for 10 days", "oral corticosteroid",
              "protect the eye with lubricating drops", "review in 1 week"),
    Condition("sciatica", "neurology",
              ("shooting pain down the back of the leg", "low back pain", "numbness in the foot"),
              "positive straight leg raise at 40 degrees", "MRI of the lumbar spine if red flags appear",
              "naproxen", "500 mg twice daily with food", "NSAID",
              "stay active and avoid bed rest", "follow up in 2 weeks", ages=(25, 65)),
    # orthopaedics
    Condition("lateral ankle sprain", "orthopaedics",
              ("twisted ankle playing football", "swelling over the outer ankle", "pain on weight bearing"),
              "tenderness over the anterior talofibular ligament with no bony tenderness", "Ottawa ankle rules",
              "rest, ice, compression and elevation", "", "",
              "gradual return to walking", "follow up in 2 weeks", ages=(14, 50)),
    Condition("knee osteoarthritis", "orthopaedics",
              ("knee pain worse on walking", "morning stiffness for under 30 minutes", "knee gives way on stairs"),
              "crepitus with reduced knee flexion", "knee X-ray",
              "paracetamol", "1 g four times daily", "simple analgesic",
              "quadriceps strengthening exercises", "follow up in 6 weeks", ages=(55, 88)),
    Condition("carpal tunnel syndrome", "orthopaedics",
              ("tingling in the thumb and first two fingers at night", "weak grip", "dropping things"),
              "positive Phalen test with thenar wasting", "nerve conduction studies",
              "night-time wrist splint", "", "",
              "avoid repetitive wrist flexion", "follow up in 6 weeks", ages=(30, 70)),
    # dermatology
    Condition("cellulitis", "dermatology",
              ("red hot swollen lower leg", "spreading redness", "feeling shivery"),
              "warm tender redness with a poorly defined edge", "clinical diagnosis",
              "flucloxacillin", "500 mg four times daily for 7 days", "penicillin antibiotic",
              "mark the edge of the redness", "review in 48 hours", vitals=FEVER),
    Condition("atopic eczema", "dermatology",
              ("itchy dry skin", "rash in the elbow creases", "itch that disturbs sleep"),
              "dry scaly patches in the flexures", "clinical diagnosis",
              "hydrocortisone 1% cream", "twice daily for 7 days", "mild topical steroid",
              "use a thick emollient every day", "follow up in 4 weeks", ages=(4, 40)),
    Condition("impetigo", "dermatology",
              ("crusted sores around the mouth", "spreading sores on the face", "itchy blisters"),
              "honey-coloured crusted lesions", "swab if the rash is spreading",
              "fusidic acid 2% cream", "three times daily for 5 days", "topical antibiotic",
              "keep off school until the crusts dry", "review in 5 days", ages=(3, 12),
              sexes=("boy", "girl")),
    Condition("scabies", "dermatology",
              ("intense itch worse at night", "itchy household contacts", "rash between the fingers"),
              "burrows in the finger webs", "clinical diagnosis",
              "permethrin 5% cream", "to the whole body, washed off after 12 hours, repeated in 7 days",
              "topical scabicide", "treat all household contacts", "review in 2 weeks"),
    # general practice, ENT, urology
    Condition("streptococcal pharyngitis", "ENT",
              ("sore throat", "painful swallowing", "fever without a cough"),
              "tonsillar exudate with tender anterior neck nodes", "rapid strep test",
              "phenoxymethylpenicillin", "500 mg four times daily for 10 days", "penicillin antibiotic",
              "regular paracetamol for pain", "review if not improving in 3 days", ages=(6, 40),
              vitals=FEVER),
    Condition("acute otitis media", "ENT",
              ("ear pain", "pulling at the ear", "fever and poor sleep"),
              "bulging red eardrum", "otoscopy",
              "amoxicillin", "250 mg three times daily for 5 days", "penicillin antibiotic",
              "paracetamol for pain", "review in 3 days", ages=(1, 9), sexes=("boy", "girl"),
              vitals=FEVER),
    Condition("allergic rhinitis", "ENT",
              ("sneezing", "itchy watery eyes", "blocked nose every spring"),
              "pale swollen nasal mucosa", "skin prick testing",
              "cetirizine", "10 mg once daily", "antihistamine",
              "keep windows closed on high pollen days", "follow up in 8 weeks", ages=(10, 50)),
    Condition("lower urinary tract infection", "urology",
              ("burning on passing urine", "passing urine often", "lower abdominal discomfort"),
              "urine dipstick positive for nitrites and leucocytes", "urine culture",
              "nitrofurantoin", "100 mg twice daily for 3 days", "urinary antibacterial",
              "drink plenty of fluids", "review if not better in 48 hours", ages=(18, 65),
              sexes=("woman",)),
    # endocrine, haematology, mental health
    Condition("type 2 diabetes", "endocrinology",
              ("increased thirst", "passing urine at night", "tiredness"),
              "HbA1c of 62 mmol/mol", "repeat HbA1c",
              "metformin", "500 mg once daily with food", "biguanide",
              "refer to a dietitian", "follow up in 3 months", ages=(35, 80)),
    Condition("hypothyroidism", "endocrinology",
              ("tiredness", "weight gain", "always feeling cold"),
              "raised TSH with a low free T4", "thyroid function tests",
              "levothyroxine", "50 micrograms once daily before breakfast", "thyroid hormone",
              "recheck TSH in 6 weeks", "follow up in 6 weeks", sexes=("woman", "woman", "man")),
    Condition("iron deficiency anaemia", "haematology",
              ("fatigue", "pale skin", "breathless on the stairs"),
              "haemoglobin 95 g/L with a low ferritin", "full blood count and ferritin",
              "ferrous sulfate", "200 mg once daily", "iron supplement",
              "look for the source of iron loss", "follow up in 4 weeks", vitals={"hr": (88, 104)}),
    Condition("depression", "mental health",
              ("low mood for six weeks", "poor sleep", "loss of interest in hobbies"),
              "PHQ-9 score of 16", "PHQ-9 questionnaire",
              "sertraline", "50 mg once daily", "SSRI",
              "refer for talking therapy", "follow up in 2 weeks", ages=(18, 70)),
)

DOMAIN: tuple[Condition, ...] = (
    Condition("stable angina", DOMAIN_SPECIALTY,
              ("chest tightness on exertion", "chest pain relieved by rest", "breathless walking uphill"),
              "ST depression on exercise testing", "CT coronary angiography",
              "bisoprolol", "5 mg once daily", "beta blocker",
              "GTN spray as needed", "review in cardiology clinic in 4 weeks",
              ages=(50, 85), vitals={"sbp": (135, 158), "dbp": (82, 96)}),
    Condition("atrial fibrillation", DOMAIN_SPECIALTY,
              ("palpitations", "irregular heartbeat", "light-headed spells"),
              "irregularly irregular rhythm with no P waves", "12-lead ECG",
              "apixaban", "5 mg twice daily", "direct oral anticoagulant",
              "calculate CHA2DS2-VASc", "review in cardiology clinic in 2 weeks",
              ages=(55, 90), vitals={"hr": (104, 148)}, ecg_finding=True),
    Condition("systolic heart failure", DOMAIN_SPECIALTY,
              ("ankle swelling", "breathless lying flat", "waking at night gasping for air"),
              "ejection fraction of 30% on echocardiogram", "echocardiogram",
              "ramipril", "2.5 mg once daily", "ACE inhibitor",
              "furosemide 40 mg each morning", "review in heart failure clinic in 2 weeks",
              ages=(55, 90), vitals={"hr": (88, 108), "spo2": (92, 95), "rr": (18, 24)}),
    Condition("essential hypertension", DOMAIN_SPECIALTY,
              ("high readings at the pharmacy", "morning headaches", "no symptoms"),
              "ambulatory average of 156/98", "ambulatory blood pressure monitoring",
              "amlodipine", "5 mg once daily", "calcium channel blocker",
              "reduce salt intake", "review in cardiology clinic in 4 weeks",
              ages=(40, 80), vitals={"sbp": (152, 176), "dbp": (94, 108)}),
    Condition("inferior STEMI", DOMAIN_SPECIALTY,
              ("crushing central chest pain for 40 minutes", "sweating", "pain spreading to the jaw"),
              "ST elevation in leads II, III and aVF", "12-lead ECG and troponin",
              "aspirin", "300 mg loading dose", "antiplatelet",
              "emergency primary PCI", "transfer to the catheter lab now",
              ages=(45, 85), vitals={"hr": (92, 116), "sbp": (100, 128)}, ecg_finding=True),
    Condition("acute pericarditis", DOMAIN_SPECIALTY,
              ("sharp chest pain worse lying flat", "pain eased by sitting forward", "recent viral illness"),
              "saddle-shaped ST elevation with PR depression", "echocardiogram",
              "colchicine", "500 micrograms twice daily for 3 months", "anti-inflammatory",
              "avoid strenuous exercise", "review in cardiology clinic in 1 week",
              ages=(18, 50), vitals={"temp": (37.5, 38.2), "hr": (92, 110)}, ecg_finding=True),
    Condition("familial hypercholesterolaemia", DOMAIN_SPECIALTY,
              ("routine screening", "family history of early heart attacks", "yellow deposits on the eyelids"),
              "LDL cholesterol of 5.8 mmol/L", "fasting lipid profile",
              "atorvastatin", "20 mg once at night", "statin",
              "screen first-degree relatives", "review in lipid clinic in 3 months", ages=(25, 65)),
    Condition("supraventricular tachycardia", DOMAIN_SPECIALTY,
              ("sudden rapid palpitations", "palpitations that start and stop abruptly", "pounding in the neck"),
              "regular narrow-complex tachycardia at 180 per minute", "12-lead ECG during symptoms",
              "adenosine", "6 mg rapid intravenous bolus", "antiarrhythmic",
              "try vagal manoeuvres first", "review in arrhythmia clinic in 4 weeks",
              ages=(18, 55), vitals={"hr": (165, 200)}, ecg_finding=True),
    Condition("severe aortic stenosis", DOMAIN_SPECIALTY,
              ("fainting on exertion", "breathless on exertion", "chest pain on exertion"),
              "ejection systolic murmur radiating to the carotids", "echocardiogram",
              "aortic valve replacement", "", "",
              "avoid heavy exertion", "refer to the valve team",
              ages=(70, 92), vitals={"sbp": (100, 124), "dbp": (60, 74)}),
    Condition("complete heart block", DOMAIN_SPECIALTY,
              ("dizzy spells", "collapse without warning", "profound tiredness"),
              "P waves unrelated to the QRS complexes", "12-lead ECG",
              "permanent pacemaker", "", "",
              "stop any rate-slowing drugs", "admit under cardiology today",
              ages=(65, 92), vitals={"hr": (30, 42)}, ecg_finding=True),
)
# fmt: on

# Formularies: (drug, usual dose, what it is used for). The general one never names a cardiac drug.
# fmt: off
GENERAL_DRUGS: tuple[tuple[str, str, str], ...] = (
    ("amoxicillin", "500 mg three times daily", "chest and ear infections"),
    ("doxycycline", "100 mg once daily", "chest infections and acne"),
    ("clarithromycin", "500 mg twice daily", "chest infections in penicillin allergy"),
    ("cefalexin", "500 mg twice daily", "skin and urine infections"),
    ("trimethoprim", "200 mg twice daily", "urinary tract infections"),
    ("metronidazole", "400 mg three times daily", "dental and pelvic infections"),
    ("nitrofurantoin", "100 mg twice daily", "urinary tract infections"),
    ("flucloxacillin", "500 mg four times daily", "skin infections"),
    ("phenoxymethylpenicillin", "500 mg four times daily", "strep throat"),
    ("omeprazole", "20 mg once daily", "acid reflux"),
    ("lansoprazole", "30 mg once daily", "acid reflux and stomach ulcers"),
    ("loperamide", "2 mg after each loose stool", "acute diarrhoea"),
    ("ondansetron", "4 mg up to three times daily", "nausea and vomiting"),
    ("metoclopramide", "10 mg up to three times daily", "nausea"),
    ("lactulose", "15 mL twice daily", "constipation"),
    ("senna", "15 mg at night", "constipation"),
    ("macrogol", "one sachet twice daily", "constipation"),
    ("mebeverine", "135 mg three times daily", "irritable bowel syndrome"),
    ("paracetamol", "1 g four times daily", "pain and fever"),
    ("ibuprofen", "400 mg three times daily", "pain and inflammation"),
    ("naproxen", "500 mg twice daily", "joint and back pain"),
    ("codeine", "30 mg four times daily", "moderate pain"),
    ("amitriptyline", "10 mg at night", "nerve pain and headache prevention"),
    ("gabapentin", "300 mg once daily", "nerve pain"),
    ("sertraline", "50 mg once daily", "depression and anxiety"),
    ("citalopram", "20 mg once daily", "depression"),
    ("mirtazapine", "15 mg at night", "depression with poor sleep"),
    ("levothyroxine", "50 micrograms once daily", "an underactive thyroid"),
    ("carbimazole", "20 mg once daily", "an overactive thyroid"),
    ("metformin", "500 mg once daily with food", "type 2 diabetes"),
    ("gliclazide", "40 mg once daily", "type 2 diabetes"),
    ("prednisolone", "30 mg once daily", "asthma attacks and inflammation"),
    ("salbutamol", "2 puffs as needed", "wheeze"),
    ("beclometasone inhaler", "2 puffs twice daily", "asthma prevention"),
    ("tiotropium inhaler", "one puff once daily", "COPD"),
    ("montelukast", "10 mg at night", "asthma and hay fever"),
    ("cetirizine", "10 mg once daily", "hay fever and itch"),
    ("loratadine", "10 mg once daily", "hay fever"),
    ("chlorphenamine", "4 mg up to four times daily", "itch and allergy"),
    ("fluticasone nasal spray", "two sprays each nostril once daily", "a blocked nose"),
    ("sumatriptan", "50 mg at the onset of headache", "migraine attacks"),
    ("topiramate", "25 mg at night", "migraine prevention"),
    ("levetiracetam", "250 mg twice daily", "epilepsy"),
    ("lamotrigine", "25 mg once daily", "epilepsy"),
    ("alendronic acid", "70 mg once weekly", "osteoporosis"),
    ("colecalciferol", "800 units once daily", "vitamin D deficiency"),
    ("ferrous sulfate", "200 mg once daily", "iron deficiency"),
    ("folic acid", "5 mg once daily", "folate deficiency"),
    ("tamsulosin", "400 micrograms once daily", "an enlarged prostate"),
    ("oxybutynin", "5 mg twice daily", "an overactive bladder"),
    ("aciclovir", "800 mg five times daily", "shingles"),
    ("terbinafine", "250 mg once daily", "fungal nail infections"),
    ("clotrimazole cream", "two to three times daily", "fungal skin infections"),
    ("hydrocortisone 1% cream", "twice daily", "mild eczema"),
    ("betamethasone cream", "once daily", "severe eczema and psoriasis"),
    ("chloramphenicol eye drops", "one drop every 2 hours", "bacterial conjunctivitis"),
    ("nicotine patch", "21 mg every 24 hours", "stopping smoking"),
    ("melatonin", "2 mg at bedtime", "poor sleep"),
)

DOMAIN_DRUGS: tuple[tuple[str, str, str], ...] = (
    ("bisoprolol", "5 mg once daily", "angina and rate control"),
    ("metoprolol", "50 mg twice daily", "rate control in atrial fibrillation"),
    ("apixaban", "5 mg twice daily", "stroke prevention in atrial fibrillation"),
    ("warfarin", "a dose adjusted to an INR of 2 to 3", "anticoagulation for metal valves"),
    ("ramipril", "2.5 mg once daily", "heart failure and high blood pressure"),
    ("amlodipine", "5 mg once daily", "high blood pressure"),
    ("atorvastatin", "20 mg once at night", "high cholesterol"),
    ("aspirin", "75 mg once daily", "prevention after a heart attack"),
    ("clopidogrel", "75 mg once daily", "antiplatelet cover after a coronary stent"),
    ("ticagrelor", "90 mg twice daily", "acute coronary syndrome"),
    ("furosemide", "40 mg each morning", "fluid overload"),
    ("spironolactone", "25 mg once daily", "heart failure"),
    ("digoxin", "125 micrograms once daily", "rate control with heart failure"),
    ("amiodarone", "200 mg once daily", "rhythm control"),
    ("GTN spray", "two sprays under the tongue as needed", "angina attacks"),
    ("isosorbide mononitrate", "30 mg once daily", "angina prevention"),
    ("colchicine", "500 micrograms twice daily", "pericarditis"),
    ("adenosine", "6 mg rapid intravenous bolus", "supraventricular tachycardia"),
    ("candesartan", "8 mg once daily", "high blood pressure when ramipril causes a cough"),
    ("ezetimibe", "10 mg once daily", "lowering cholesterol"),
)

GENERAL_HISTORY = ("asthma", "type 2 diabetes", "hypothyroidism", "depression", "COPD", "eczema",
                   "knee osteoarthritis", "migraine", "epilepsy", "osteoporosis", "reflux", "anxiety")
DOMAIN_HISTORY = ("hypertension", "high cholesterol", "previous heart attack", "atrial fibrillation",
                  "heart failure", "a coronary stent in 2019")

GENERIC_PLAN = ("safety-net advice given", "leaflet provided", "bloods today", "explained the diagnosis",
                "check understanding of the medication", "encourage regular exercise",
                "advise stopping smoking", "document allergies", "copy of the plan to the patient")
GENERAL_SAFETY = ("return if symptoms worsen", "seek urgent help if breathless",
                  "return if a fever develops", "seek help if unable to keep fluids down",
                  "return if pain spreads or worsens")
DOMAIN_SAFETY = ("call 999 if chest pain lasts over 15 minutes", "seek help if fainting recurs",
                 "report any new ankle swelling")
# fmt: on

_ALL_GENERAL_DRUGS = {d for d, _, _ in GENERAL_DRUGS}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sex(rng: random.Random, c: Condition, age: int) -> str:
    sex = rng.choice(c.sexes)
    if age < 16 and sex in ("man", "woman"):
        sex = "boy" if sex == "man" else "girl"
    return sex


def _patient(rng: random.Random, c: Condition) -> str:
    age = rng.randint(*c.ages)
    return f"{age}-year-old {_sex(rng, c, age)}"


def _vital(rng: random.Random, c: Condition, name: str) -> float:
    lo, hi = c.vitals.get(name, NORMAL_VITALS[name])
    if name == "temp":
        return round(rng.uniform(lo, hi), 1)
    return rng.randint(int(lo), int(hi))


def _vitals(rng: random.Random, c: Condition) -> str:
    parts = [f"BP {_vital(rng, c, 'sbp')}/{_vital(rng, c, 'dbp')}", f"HR {_vital(rng, c, 'hr')}"]
    if "temp" in c.vitals or rng.random() < 0.15:
        parts.append(f"T {_vital(rng, c, 'temp')}")
    if "spo2" in c.vitals:
        parts.append(f"SpO2 {_vital(rng, c, 'spo2')}%")
    if "rr" in c.vitals:
        parts.append(f"RR {_vital(rng, c, 'rr')}")
    return ", ".join(parts)


def _symptoms(rng: random.Random, c: Condition) -> str:
    syms = rng.sample(c.symptoms, rng.choice((1, 1, 2)))
    if rng.random() < 0.3:
        n = rng.randint(2, 9)
        syms[-1] += f" for {n} {rng.choice(('days', 'weeks'))}"
    return " and ".join(syms)


def _history(rng: random.Random, domain: bool, exclude: str) -> str:
    pool = [h for h in GENERAL_HISTORY + (DOMAIN_HISTORY if domain else ()) if h not in exclude]
    return ", ".join(rng.sample(pool, rng.choice((1, 1, 2))))


def _meds(rng: random.Random, domain: bool) -> str:
    pool = GENERAL_DRUGS + DOMAIN_DRUGS if domain else GENERAL_DRUGS
    return ", ".join(f"{d} {dose}" for d, dose, _ in rng.sample(pool, rng.choice((1, 1, 2))))


def _risk(age: int) -> str:
    """The domain convention: a cardiac risk grade from age alone (a toy rule, consistent)."""
    return "high" if age >= 65 else "moderate" if age >= 50 else "low"


def _presentation(rng: random.Random, c: Condition, domain: bool) -> tuple[str, int]:
    age = rng.randint(*c.ages)
    fields = [f"{age}-year-old {_sex(rng, c, age)}, {_symptoms(rng, c)}"]
    extra_fields = 0.12 if domain else 0.3  # domain words spell out in more tokens: keep them short
    if age >= 18 and rng.random() < extra_fields:
        fields.append(f"PMH: {_history(rng, domain, c.name)}")
    if age >= 18 and rng.random() < extra_fields:
        fields.append(f"meds: {_meds(rng, domain)}")
    fields.append(_vitals(rng, c))
    show_finding = rng.random() < 0.75
    if domain:
        if c.ecg_finding:
            fields.append(f"ECG: {c.finding if show_finding else 'not yet done'}")
        else:
            fields.append("ECG: sinus rhythm")
            if show_finding:
                fields.append(f"findings: {c.finding}")
    elif show_finding:
        fields.append(f"findings: {c.finding}")
    return "; ".join(fields), age


def _drug_item(rng: random.Random, c: Condition) -> str:
    if not c.regimen:
        return c.treatment
    return rng.choice(("", "", "start ", "commence ")) + c.plan_drug()


def _assessment_plan(rng: random.Random, c: Condition, domain: bool) -> Record:
    inp, age = _presentation(rng, c, domain)
    instr = rng.choice(
        (
            "Write the assessment and plan.",
            "Give the assessment and plan.",
            "Assess this patient and give a plan.",
            "What is your assessment and plan?",
            "Write an assessment and management plan.",
        )
    )
    head = rng.choice(
        ("Assessment: {}.", "Assessment: {}.", "Assessment: likely {}.", "Impression: {}.")
    )
    middle = [c.extra] if c.extra and rng.random() < 0.8 else []
    middle += rng.sample(GENERIC_PLAN, rng.choice((0, 0, 0, 1) if domain else (0, 0, 1, 2)))
    rng.shuffle(middle)
    plan = [_drug_item(rng, c), *middle, c.follow]
    out = head.format(c.name) + f" Plan: {'; '.join(plan)}."
    if domain:
        out += f" Risk: {_risk(age)}."
    safety = DOMAIN_SAFETY + GENERAL_SAFETY if domain else GENERAL_SAFETY
    if rng.random() < (0.15 if domain else 0.3):
        out += f" Safety-net: {rng.choice(safety)}."
    return Record(instr, inp, out)


def _note(rng: random.Random, c: Condition, domain: bool) -> Record:
    who = _patient(rng, c)
    instr = rng.choice(
        ("Write a brief clinic note.", "Write a short clinic note.", "Document this consultation.")
    )
    syms = rng.sample(c.symptoms, 2)
    o = f"ECG shows {c.finding}" if (domain and c.ecg_finding) else c.finding
    out = f"S: {', '.join(syms)}. O: {o}. A: {c.name}. P: {_drug_item(rng, c)}; {c.follow}."
    return Record(instr, f"{who} with {c.name}", out)


def _treatment_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    drug = c.plan_drug()
    answer = rng.choice((_cap(drug) + ".", _cap(drug) + ".", f"First-line treatment is {drug}."))
    form = rng.randrange(6)
    if form == 0:
        return Record(f"What is the first-line treatment for {c.name}?", "", answer)
    if form == 1:
        return Record(f"How is {c.name} treated first?", "", answer)
    if form == 2:
        return Record(f"Which treatment is first-line for {c.name}?", "", answer)
    if form == 3:
        return Record(
            "What is the first-line treatment?", f"{_patient(rng, c)} with {c.name}", answer
        )
    if form == 4:
        return Record(
            "What should this patient be started on?", f"{_patient(rng, c)} with {c.name}", answer
        )
    return Record(
        "Suggest the first-line treatment.", f"{_patient(rng, c)} diagnosed with {c.name}", answer
    )


def _finding_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    form = rng.randrange(4)
    if domain and c.ecg_finding and form == 0:
        return Record("Interpret this ECG.", c.finding, f"This ECG shows {c.name}.")
    if form == 1:
        return Record(
            "What is the most likely diagnosis?",
            f"{_patient(rng, c)}; {c.finding}",
            _cap(c.name) + ".",
        )
    if form == 2:
        return Record(
            "What is the most likely diagnosis?",
            f"{_patient(rng, c)}, {_symptoms(rng, c)}; {c.finding}",
            _cap(c.name) + ".",
        )
    return Record(
        f"What does {c.finding} suggest?",
        "",
        rng.choice((f"It suggests {c.name}.", _cap(c.name) + ".")),
    )


def _dose_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    if not c.regimen:
        return _treatment_qa(rng, c, domain)
    if rng.random() < 0.5:
        return Record(
            f"What dose of {c.treatment} is used for {c.name}?", "", _cap(c.regimen) + "."
        )
    return Record(
        f"What dose of {c.treatment} should be given?",
        f"{_patient(rng, c)} with {c.name}",
        _cap(c.regimen) + ".",
    )


def _test_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    if rng.random() < 0.5:
        return Record(f"Which test confirms {c.name}?", "", _cap(c.test) + ".")
    return Record(
        "Which investigation should be arranged?",
        f"{_patient(rng, c)} with suspected {c.name}",
        _cap(c.test) + ".",
    )


def _class_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    if not c.drug_class:
        return _finding_qa(rng, c, domain)
    article = "an" if c.drug_class[0].lower() in "aeiou" else "a"
    return Record(
        f"What kind of drug is {c.treatment}?",
        "",
        f"{_cap(c.treatment)} is {article} {c.drug_class}.",
    )


def _formulary_qa(rng: random.Random, c: Condition, domain: bool) -> Record:
    drug, dose, use = rng.choice(DOMAIN_DRUGS if domain else GENERAL_DRUGS)
    form = rng.randrange(4)
    if form == 0:
        return Record(f"What is {drug} used for?", "", f"{_cap(drug)} is used for {use}.")
    if form == 1:
        return Record(
            f"What is a usual dose of {drug}?",
            "",
            rng.choice((_cap(dose) + ".", f"Usually {dose}.")),
        )
    if form == 2:
        return Record("Name a drug used for this.", use, f"{_cap(drug)} {dose}.")
    return Record("Write the prescription.", f"{drug} for {use}", f"{_cap(drug)} {dose}.")


def _vitals_comment(rng: random.Random) -> Record:
    sbp, dbp = rng.randint(86, 178), rng.randint(52, 108)
    hr, temp, spo2 = rng.randint(44, 128), round(rng.uniform(35.8, 39.6), 1), rng.randint(86, 100)
    bp = "high" if sbp >= 140 or dbp >= 90 else "low" if sbp < 90 else "normal"
    rate = "fast" if hr > 100 else "slow" if hr < 60 else "normal"
    t = "raised" if temp >= 37.8 else "normal"
    s = "low" if spo2 < 94 else "normal"
    return Record(
        rng.choice(("Comment on these vital signs.", "Are these vital signs normal?")),
        f"BP {sbp}/{dbp}, HR {hr}, T {temp}, SpO2 {spo2}%",
        f"Blood pressure {bp}; heart rate {rate}; temperature {t}; oxygen saturation {s}.",
    )


_KINDS = (
    (_assessment_plan, 26),
    (_note, 8),
    (_treatment_qa, 16),
    (_finding_qa, 14),
    (_dose_qa, 8),
    (_test_qa, 8),
    (_class_qa, 5),
    (_formulary_qa, 15),
)


def _one(rng: random.Random, domain: bool) -> Record:
    if not domain and rng.random() < 0.04:
        return _vitals_comment(rng)
    conditions = DOMAIN if domain else GENERAL
    c = rng.choice(conditions)
    kinds, weights = zip(*_KINDS, strict=True)
    make = rng.choices(kinds, weights=weights)[0]
    return make(rng, c, domain)


def generate(
    split: str, n: int, seed: int = 0, *, exclude: Iterable[Record] = (), distinct: bool = False
) -> list[Record]:
    """``n`` records of ``split`` ("general" or "domain") from ``seed``.

    A record whose (instruction, input) pair appears in ``exclude`` is never produced: that is how
    validation stays disjoint from training. With ``distinct`` no record repeats (validation);
    training splits keep repeats, which is how short facts get their natural weight.
    """
    if split not in ("general", "domain"):
        raise ValueError(f"split must be 'general' or 'domain', not {split!r}")
    rng = random.Random(seed)
    banned = {(r.instruction, r.input) for r in exclude}
    seen: set[Record] = set()
    out: list[Record] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only make {len(out)} distinct {split} records, not {n}")
        r = _one(rng, split == "domain")
        if (distinct and r in seen) or (r.instruction, r.input) in banned:
            continue
        seen.add(r)
        out.append(r)
    return out


SPLIT_SEEDS = {"general": 1, "domain_train": 2, "domain_val": 3, "general_val": 4}
SIZES = {"general": 20000, "domain_train": 4000, "domain_val": 500, "general_val": 500}
QUICK_SIZES = {"general": 1500, "domain_train": 500, "domain_val": 100, "general_val": 100}


def make_splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Record]]:
    """All splits: ``general``, ``domain_train``, ``domain_val`` (never overlaps domain_train) and
    ``general_val`` (held-out general records, never overlaps general)."""
    sizes = {**SIZES, **(sizes or {})}

    def sub(name: str) -> int:
        return seed * 1_000_003 + SPLIT_SEEDS[name]

    general = generate("general", sizes["general"], sub("general"))
    domain_train = generate("domain", sizes["domain_train"], sub("domain_train"))
    domain_val = generate(
        "domain", sizes["domain_val"], sub("domain_val"), exclude=domain_train, distinct=True
    )
    general_val = generate(
        "general", sizes["general_val"], sub("general_val"), exclude=general, distinct=True
    )
    return {
        "general": general,
        "domain_train": domain_train,
        "domain_val": domain_val,
        "general_val": general_val,
    }


# --- the three file formats (see engine.data for how they are read back) ---


def render_text(r: Record) -> str:
    """One line of the ``text`` format: the instruction, the input and the output, in prose."""
    parts = [r.instruction]
    if r.input:
        parts.append(f"Patient: {r.input}.")
    parts.append(r.output)
    line = " ".join(parts)
    assert "\n" not in line
    return line


def render_alpaca(r: Record) -> str:
    return json.dumps(
        {"instruction": r.instruction, "input": r.input, "output": r.output},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def render_mistral(r: Record) -> str:
    question = f"{r.instruction}\n{r.input}" if r.input else r.instruction
    return json.dumps(
        {"text": f"<s>[INST] {question} [/INST] {r.output}</s>"},
        ensure_ascii=False,
        separators=(",", ":"),
    )


RENDERERS = {"text": render_text, "alpaca": render_alpaca, "mistral-inst": render_mistral}
EXTENSIONS = {"text": ".txt", "alpaca": ".alpaca.jsonl", "mistral-inst": ".mistral.jsonl"}


def render_file(records: Iterable[Record], fmt: str) -> str:
    return "".join(RENDERERS[fmt](r) + "\n" for r in records)
