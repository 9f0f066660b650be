"""The cell-type catalog: what each class the models can name means to a technologist.

Normal adult shares are typical reference intervals for a manual or automated differential
(they vary by laboratory and method); they are context for the reader, not diagnostic limits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellType:
    name: str  # class folder name used by the datasets and model cards
    display_name: str
    lineage: str
    morphology: str
    normal_share: str  # share of the adult white-cell differential (or count, for non-WBC)
    raised_in: str
    lowered_in: str
    # Counted in the white-cell differential. Platelets never are, and nucleated red cells are
    # reported per 100 white cells instead (ICSH), so neither dilutes the white-cell shares.
    white_cell: bool = True
    # Has a nucleus. An analyzer that does not count nucleated red cells apart counts them as
    # white cells, whose total a lab then corrects (`hematovision.reference.corrected_count`).
    nucleated: bool = True
    # The adult reference interval of its share of the white cells, in percent (low, high): the
    # numbers `normal_share` opens with, which the batch page compares a differential against
    # (`hematovision.reference`); for a class counted beside the differential, per 100 white
    # cells (nucleated red cells: none); None where the catalog states none.
    reference_percent: tuple[float, float] | None = None
    # The same as an absolute count, x 10^9/L (the numbers in `normal_share`'s brackets), read
    # against when the batch page is given the film's total white-cell count; None where the
    # catalog states none.
    reference_absolute: tuple[float, float] | None = None


CELL_TYPES: dict[str, CellType] = {
    cell.name: cell
    for cell in (
        CellType(
            name="eosinophil",
            display_name="Eosinophil",
            lineage="Granulocyte (myeloid)",
            morphology=(
                "12-17 µm; usually a bilobed nucleus; cytoplasm packed with large, uniform "
                "orange-red (eosinophilic) granules that do not cover the nucleus."
            ),
            normal_share="1-4 % of white cells (about 0.0-0.5 x 10^9/L)",
            raised_in=(
                "Allergic disease and asthma, parasitic (helminth) infection, drug reactions, "
                "some skin diseases, eosinophilic and myeloproliferative disorders."
            ),
            lowered_in="Acute stress, corticosteroid treatment, Cushing syndrome.",
            reference_percent=(1, 4),
            reference_absolute=(0.0, 0.5),
        ),
        CellType(
            name="lymphocyte",
            display_name="Lymphocyte",
            lineage="Lymphoid",
            morphology=(
                "Small (7-10 µm) to large (up to 15 µm); round, dense, dark nucleus filling most "
                "of the cell; thin rim of pale blue cytoplasm, few or no granules."
            ),
            normal_share="20-40 % of white cells (about 1.0-4.0 x 10^9/L)",
            raised_in=(
                "Viral infections (e.g. infectious mononucleosis, with reactive forms), pertussis, "
                "chronic lymphocytic leukaemia and other lymphoproliferative disorders."
            ),
            lowered_in="HIV infection, corticosteroids, chemotherapy, acute stress.",
            reference_percent=(20, 40),
            reference_absolute=(1.0, 4.0),
        ),
        CellType(
            name="monocyte",
            display_name="Monocyte",
            lineage="Monocytic (myeloid)",
            morphology=(
                "The largest normal white cell (15-20 µm); kidney-shaped, folded or lobulated "
                "nucleus with lacy chromatin; abundant grey-blue cytoplasm, often vacuolated."
            ),
            normal_share="2-8 % of white cells (about 0.2-0.8 x 10^9/L)",
            raised_in=(
                "Chronic infections (tuberculosis, endocarditis), recovery from neutropenia, "
                "inflammatory and autoimmune disease, chronic myelomonocytic leukaemia."
            ),
            lowered_in="Hairy cell leukaemia, aplastic anaemia, corticosteroids.",
            reference_percent=(2, 8),
            reference_absolute=(0.2, 0.8),
        ),
        CellType(
            name="neutrophil",
            display_name="Neutrophil",
            lineage="Granulocyte (myeloid)",
            morphology=(
                "10-15 µm; nucleus segmented into 2-5 lobes joined by thin strands (band forms "
                "have an unsegmented, curved nucleus); pale pink cytoplasm with fine granules."
            ),
            normal_share="40-70 % of white cells (about 2.0-7.5 x 10^9/L)",
            raised_in=(
                "Bacterial infection, inflammation, tissue damage, corticosteroids, pregnancy, "
                "myeloproliferative disorders (a left shift with bands suggests acute infection)."
            ),
            lowered_in="Chemotherapy, some viral infections, drugs, autoimmune neutropenia.",
            reference_percent=(40, 70),
            reference_absolute=(2.0, 7.5),
        ),
        CellType(
            name="basophil",
            display_name="Basophil",
            lineage="Granulocyte (myeloid)",
            morphology=(
                "10-14 µm; large, dark purple-black granules that crowd the cytoplasm and often "
                "hide the (usually bilobed) nucleus."
            ),
            normal_share="0-1 % of white cells (about 0.0-0.2 x 10^9/L)",
            raised_in=(
                "Chronic myeloid leukaemia and other myeloproliferative neoplasms, allergic "
                "reactions, hypothyroidism."
            ),
            lowered_in="Acute allergic reactions, hyperthyroidism, corticosteroids.",
            reference_percent=(0, 1),
            reference_absolute=(0.0, 0.2),
        ),
        CellType(
            name="erythroblast",
            display_name="Erythroblast (nucleated red cell)",
            lineage="Erythroid",
            morphology=(
                "Red-cell precursor with a round, very dense, often eccentric nucleus and "
                "blue-grey to pink cytoplasm; smaller than most white cells."
            ),
            normal_share="Absent from normal adult blood (present in newborns)",
            raised_in=(
                "Haemolysis, severe anaemia or hypoxia, bone-marrow infiltration, "
                "myelofibrosis, after splenectomy."
            ),
            lowered_in="Not applicable.",
            white_cell=False,
            reference_percent=(0, 0),  # per 100 white cells: absent
        ),
        CellType(
            name="ig",
            display_name="Immature granulocyte",
            lineage="Granulocyte precursor (myeloid)",
            morphology=(
                "Promyelocytes, myelocytes and metamyelocytes: larger cells with a round to "
                "kidney-shaped, unsegmented nucleus and blue to pink granular cytoplasm."
            ),
            normal_share="0-1 % of white cells",
            raised_in=(
                "Severe bacterial infection and sepsis, inflammation, pregnancy, G-CSF "
                "treatment, myeloproliferative neoplasms and leukaemia."
            ),
            lowered_in="Not applicable.",
            reference_percent=(0, 1),
        ),
        CellType(
            name="platelet",
            display_name="Platelet (thrombocyte)",
            lineage="Megakaryocytic",
            morphology=(
                "Small (2-4 µm) anucleate fragments with purple granules; may clump."
            ),
            normal_share="Not part of the white-cell differential (about 150-400 x 10^9/L)",
            raised_in="Reactive thrombocytosis (infection, iron deficiency), essential thrombocythaemia.",
            lowered_in="Immune thrombocytopenia, marrow failure, consumption (DIC), hypersplenism.",
            white_cell=False,
            nucleated=False,
        ),
    )
}


# A reviewer's class for a white cell of a type the model does not name (a blast, a variant
# lymphocyte, a plasma cell): counted in the differential's white cells, under this one row, as
# a manual count counts it; never a class a model is trained on (the reviewed-cells archive
# leaves it out).
OTHER_WHITE_CELL = "other-white-cell"
OTHER_WHITE_CELL_NAME = "Other white cell"
# What the pages give as examples of it (singular, plural), those a model names left out.
OTHER_WHITE_CELL_EXAMPLES = (("blast", "blasts"), ("basophil", "basophils"),
                             ("variant lymphocyte", "variant lymphocytes"))


def other_white_cells(classes: list[str], plural: bool = False, most: int = 2) -> list[str]:
    """Examples of white cells a model of `classes` does not name: "such as blasts" would be
    wrong for a researcher's model with a class "blast"."""
    named = {display_name(c).lower() for c in classes}
    return [many if plural else one for one, many in OTHER_WHITE_CELL_EXAMPLES
            if not {one, many} & named][:most]


def is_white_cell(name: str) -> bool:
    """Whether a class counts in the white-cell differential; a class the catalog does not know
    (a researcher's own model) does, as every class of a white-cell model would."""
    return CELL_TYPES[name].white_cell if name in CELL_TYPES else True


def is_nucleated_red_cell(name: str) -> bool:
    """Whether a class is a nucleated cell that is not a white cell (an erythroblast): what an
    analyzer that does not count such cells apart adds to its white-cell count. A class the
    catalog does not know is a white cell (`is_white_cell`), so not one."""
    return name in CELL_TYPES and CELL_TYPES[name].nucleated and not CELL_TYPES[name].white_cell


def display_name(name: str) -> str:
    """The catalog's name for a class; for one the catalog does not know (a researcher's own
    model) its folder name written as the catalog's are, "smudge_cell" as "Smudge cell", so
    that it reads like the others in a list."""
    if name == OTHER_WHITE_CELL:
        return OTHER_WHITE_CELL_NAME
    if name in CELL_TYPES:
        return CELL_TYPES[name].display_name
    words = " ".join(name.replace("_", " ").replace("-", " ").split()) or name
    return words[:1].upper() + words[1:]
