import csv
import json

import pytest

from training import data as data_lib
from tests.conftest import CLASSES, make_image


def kaggle_like(tmp_path, sources_per_class=6, images_per_source=4, unmatched=3):
    """A Kaggle-style split folder plus a bccd_source_map.csv beside it."""
    root = tmp_path / "kaggle" / "train"
    rows = []
    for c, name in enumerate(CLASSES):
        for s in range(sources_per_class):
            for k in range(images_per_source):
                file = f"_{k}_{c}{s}.jpeg"
                make_image(root / name / file, (50 * c, 100, 20 * s))
                rows.append(["train", name, file, f"Blood_{c}{s}", "sift", "20"])
        for u in range(unmatched):
            file = f"_9_{c}{u}.jpeg"
            make_image(root / name / file, (50 * c, 10, 10))
            rows.append(["train", name, file, "", "unmatched", ""])
    with open(root.parent / data_lib.SOURCE_MAP_NAME, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "class", "file", "bccd_source_image", "match_method", "match_score"])
        writer.writerows(rows)
    return root


def test_grouped_split_never_puts_a_source_on_both_sides(tmp_path):
    root = kaggle_like(tmp_path)
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    group_of = dict(zip(dataset.files, dataset.groups))
    for seed in range(5):
        split = data_lib.make_split(dataset, 0.34, 0.0, seed)
        train_groups = {group_of[f] for f in split["train"]}
        val_groups = {group_of[f] for f in split["val"]}
        assert train_groups and val_groups
        assert not train_groups & val_groups
        # every class is represented in validation (stratified by group label)
        assert {f.split("/")[0] for f in split["val"]} == set(CLASSES)
    assert len(split["unassigned"]) == 4 * 3
    assert all(group_of[f] is None for f in split["unassigned"])


def test_split_is_reproducible_from_the_seed(tmp_path):
    root = kaggle_like(tmp_path)
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    assert data_lib.make_split(dataset, 0.3, 0.2, 7) == data_lib.make_split(dataset, 0.3, 0.2, 7)


def test_a_leaking_split_is_refused(tmp_path):
    root = kaggle_like(tmp_path)
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    split = data_lib.make_split(dataset, 0.34, 0.0, 0)
    group_of = dict(zip(dataset.files, dataset.groups))
    # move one image of a validation source into train: its siblings stay in val
    moved = split["val"][0]
    sibling_left = [f for f in split["val"][1:] if group_of[f] == group_of[moved]]
    assert sibling_left
    split["train"].append(moved)
    split["val"].remove(moved)
    with pytest.raises(ValueError, match="leaks"):
        data_lib.check_disjoint(split, dataset)
    path = tmp_path / "splits.json"
    data_lib.save_split(split, path, dataset)
    with pytest.raises(ValueError, match="leaks"):
        data_lib.load_split(path, dataset)


def write_field_notes(tmp_path, pairs):
    """bccd/bccd_image_notes.csv beside the kaggle folder, listing `pairs` as one field."""
    linked = {}
    for a, b in pairs:
        linked.setdefault(a, []).append(b)
        linked.setdefault(b, []).append(a)
    path = tmp_path / "bccd" / "bccd_image_notes.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels_csv_category", "same_field_of_view_as"])
        for image, others in sorted(linked.items()):
            writer.writerow([f"{image}.jpg", "", ";".join(others)])


def test_smears_of_one_field_of_view_are_one_group_on_one_side(tmp_path):
    root = kaggle_like(tmp_path)
    # Blood_00/Blood_01: one eosinophil seen twice; Blood_12/Blood_22: one cell, two labels;
    # Blood_03 and Blood_04 each overlap an image that is no source: not joined to each other.
    write_field_notes(tmp_path, [("Blood_00", "Blood_01"), ("Blood_12", "Blood_22"),
                                 ("Blood_03", "Other_9"), ("Blood_04", "Other_9")])
    dataset = data_lib.grouped_image_folder(root, 0, "auto", "auto")
    group_of = dict(zip(dataset.files, dataset.groups))
    assert group_of["eosinophil/_0_00.jpeg"] == "Blood_00+Blood_01"
    assert group_of["eosinophil/_3_01.jpeg"] == "Blood_00+Blood_01"
    assert group_of["eosinophil/_0_03.jpeg"] == "Blood_03"
    assert group_of["eosinophil/_0_04.jpeg"] == "Blood_04"
    for seed in range(8):
        split = data_lib.make_split(dataset, 0.34, 0.0, seed)
        sides = {name for name in ("train", "val")
                 for f in split[name] if f.split("/")[1][3:5] in ("00", "01")}
        assert len(sides) == 1
        assert split["excluded_groups"] == ["Blood_12+Blood_22"]
    # without the notes (or for a run made before them) the smears stay apart
    apart = data_lib.grouped_image_folder(root, 0, "auto", "none")
    assert dict(zip(apart.files, apart.groups))["eosinophil/_3_01.jpeg"] == "Blood_01"


def test_identical_files_are_one_group_and_cross_class_copies_are_excluded(tmp_path):
    root = tmp_path / "pbc"
    for c, name in enumerate(CLASSES):
        for i in range(5):
            make_image(root / name / f"{name}_{i}.jpg", (40 * c + 10 * i, 80, 80))
    dup = (root / "eosinophil" / "eosinophil_0.jpg").read_bytes()
    (root / "eosinophil" / "copy.jpg").write_bytes(dup)  # same class duplicate
    (root / "neutrophil" / "cross.jpg").write_bytes(dup)  # cross-class duplicate
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    split = data_lib.make_split(dataset, 0.2, 0.2, 0)
    assert len(split["excluded_groups"]) == 1
    placed = split["train"] + split["val"] + split["test"]
    for name in ("eosinophil/eosinophil_0.jpg", "eosinophil/copy.jpg", "neutrophil/cross.jpg"):
        assert name not in placed
    assert len(placed) == 20 - 1


def test_class_weights_are_inverse_frequency_with_mean_one():
    weights = data_lib.class_weights([0, 0, 0, 1], 3)
    assert weights[0] == pytest.approx(4 / 6)
    assert weights[1] == pytest.approx(2.0)
    assert weights[2] == 0.0


def test_saved_split_records_counts(tmp_path):
    root = kaggle_like(tmp_path)
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    split = data_lib.make_split(dataset, 0.34, 0.0, 0)
    data_lib.save_split(split, tmp_path / "s.json", dataset)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["counts"]["unassigned"] == 12
    assert saved["groups"]["train"] + saved["groups"]["val"] == 24


def test_extra_data_keeps_the_shared_classes_mapped_to_the_main_indices(tmp_path):
    for name in ("monocyte", "eosinophil", "platelet"):  # platelet is not one of CLASSES
        for i in range(2):
            make_image(tmp_path / "pbc" / name / f"{name}_{i}.webp", (90, 60, 160), fmt="WEBP")
    make_image(tmp_path / "more" / "lymphocyte" / "l.png", (60, 60, 200), fmt="PNG")
    paths, labels = data_lib.list_extra(f"{tmp_path / 'pbc'}, {tmp_path / 'more'}", CLASSES)
    names = [(p.parent.name, CLASSES[y]) for p, y in zip(paths, labels)]
    assert names == [("eosinophil", "eosinophil")] * 2 + [("monocyte", "monocyte")] * 2 + [
        ("lymphocyte", "lymphocyte")]
    assert data_lib.list_extra("", CLASSES) == ([], [])
    with pytest.raises(SystemExit, match="no images of the classes"):
        data_lib.list_extra(str(tmp_path / "pbc" / "platelet" / ".."), ["basophil"])


def test_hidden_files_archive_folders_and_empty_class_folders_are_not_listed(tmp_path):
    root = tmp_path / "data"
    make_image(root / "eosinophil" / "e1.jpg", (200, 60, 60))
    make_image(root / "eosinophil" / "deeper" / "e2.PNG", (200, 60, 60), fmt="PNG")
    (root / "eosinophil" / "._e1.jpg").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    make_image(root / "eosinophil" / ".ipynb_checkpoints" / "e1.jpg", (200, 60, 60))
    make_image(root / "__MACOSX" / "eosinophil" / "e1.jpg", (200, 60, 60))
    make_image(root / ".trash" / "x.jpg", (0, 0, 0))
    (root / "monocyte").mkdir()
    (root / "monocyte" / "notes.txt").write_text("to do")
    make_image(root / "neutrophil" / "n1.jpg", (200, 150, 200))
    dataset = data_lib.list_image_folder(root)
    assert dataset.classes == ["eosinophil", "neutrophil"]
    assert dataset.files == ["eosinophil/deeper/e2.PNG", "eosinophil/e1.jpg", "neutrophil/n1.jpg"]
    assert dataset.labels == [0, 0, 1]
    assert dataset.left_out == ["monocyte"]


def test_a_folder_without_class_folders_of_images_is_refused_with_the_expected_layout(tmp_path):
    make_image(tmp_path / "flat" / "cell.jpg", (1, 2, 3))
    with pytest.raises(SystemExit, match="one sub-folder of images per class"):
        data_lib.list_image_folder(tmp_path / "flat")
    with pytest.raises(SystemExit, match="is not a folder"):
        data_lib.list_image_folder(tmp_path / "missing")


def test_every_class_keeps_a_training_group_however_small(tmp_path):
    """Two groups and 20 % validation + 20 % test used to send one to each, none to train."""
    root = tmp_path / "data"
    for c, (name, n) in enumerate((("eosinophil", 2), ("lymphocyte", 3), ("neutrophil", 12))):
        for i in range(n):
            make_image(root / name / f"{i}.jpg", (10 * i, 60 + 50 * c, 90))
    dataset = data_lib.grouped_image_folder(root, 0, "none")
    split = data_lib.make_split(dataset, 0.2, 0.2, 0)
    counts = data_lib.class_groups(dataset, split)
    assert counts["eosinophil"] == {"train": 1, "val": 1, "test": 0}
    assert counts["lymphocyte"] == {"train": 1, "val": 1, "test": 1}
    assert counts["neutrophil"] == {"train": 8, "val": 2, "test": 2}


def test_a_file_group_source_map_keeps_each_slide_on_one_side(tmp_path):
    """A researcher's own data: any CSV with `file,group` columns names each image's slide."""
    root = tmp_path / "own"
    rows = []
    for name in CLASSES:
        for slide in range(5):
            for k in range(3):
                file = f"{name}/s{slide}_{k}.jpg"
                make_image(root / file, (40 * slide, 100 + k, 30 * CLASSES.index(name)))
                rows.append([file, f"{name}-slide{slide}"])
    make_image(root / "monocyte" / "unknown.jpg", (5, 5, 5))
    map_file = tmp_path / "slides.csv"
    with open(map_file, "w", newline="") as f:
        csv.writer(f).writerows([["file", "group"], *rows])
    dataset = data_lib.grouped_image_folder(root, 0, str(map_file))
    group_of = dict(zip(dataset.files, dataset.groups))
    assert group_of["lymphocyte/s3_1.jpg"] == "lymphocyte-slide3"
    assert group_of["monocyte/unknown.jpg"] is None
    split = data_lib.make_split(dataset, 0.2, 0.2, 1)
    sides = {}
    for side in data_lib.SPLITS:
        for f in split[side]:
            assert sides.setdefault(group_of[f], side) == side
    assert len({g for g, s in sides.items() if s == "val"}) == 4  # one slide per class
    assert split["unassigned"] == ["monocyte/unknown.jpg"]
    # Saved by Excel as "CSV UTF-8", the map starts with a byte order mark: read the same.
    map_file.write_bytes(b"\xef\xbb\xbf" + map_file.read_bytes())
    again = data_lib.grouped_image_folder(root, 0, str(map_file))
    assert dict(zip(again.files, again.groups)) == group_of


def slides(tmp_path, sizes: list[int]) -> tuple:
    """A researcher's own data as a lab has it: slides that each hold cells of every class
    (`sizes[k]` cells per class on slide k), and a `file,group` map naming each image's slide."""
    root, rows = tmp_path / "own", []
    for slide, size in enumerate(sizes):
        for name in CLASSES:
            for k in range(size):
                file = f"{name}/s{slide}_{k}.jpg"
                make_image(root / file, (10 * slide, 100 + k, 30 * CLASSES.index(name)))
                rows.append([file, f"slide{slide}"])
    map_file = tmp_path / "slides.csv"
    with open(map_file, "w", newline="") as f:
        csv.writer(f).writerows([["file", "group"], *rows])
    return root, map_file


def test_slides_holding_cells_of_every_class_are_split_whole_not_left_out(tmp_path):
    # Until this was fixed a slide filed under several classes was taken for a relabelled
    # duplicate and excluded: every slide, so nothing was left to train on.
    root, map_file = slides(tmp_path, [3, 1, 4, 2, 2, 5, 1, 3, 2, 2, 4, 1])
    dataset = data_lib.grouped_image_folder(root, 0, str(map_file))
    assert dataset.sources_hold_many_cells
    group_of = dict(zip(dataset.files, dataset.groups))
    for seed in range(5):
        split = data_lib.make_split(dataset, 0.2, 0.2, seed)
        assert split["excluded_groups"] == [] and split["unassigned"] == []
        sides = {}
        for side in data_lib.SPLITS:
            for f in split[side]:
                assert sides.setdefault(group_of[f], side) == side  # a slide on one side
        placed = {side: len(split[side]) / len(dataset.files) for side in data_lib.SPLITS}
        assert 0.1 <= placed["val"] <= 0.3 and 0.1 <= placed["test"] <= 0.3
        assert {f.split("/")[0] for f in split["train"]} == set(CLASSES)
    assert data_lib.make_split(dataset, 0.2, 0.2, 3) == data_lib.make_split(dataset, 0.2, 0.2, 3)
    assert len({tuple(data_lib.make_split(dataset, 0.2, 0.2, seed)["val"])
                for seed in range(5)}) > 1  # each seed its own split


def test_two_slides_give_one_to_validation_and_keep_one_to_train_on(tmp_path):
    root, map_file = slides(tmp_path, [2, 2])
    split = data_lib.make_split(data_lib.grouped_image_folder(root, 0, str(map_file)),
                                0.25, 0.0, 0)
    assert len(split["train"]) == len(split["val"]) == 2 * len(CLASSES)


def test_reviewed_cell_tables_unpacked_into_the_data_are_its_source_map(tmp_path):
    """The app's reviewed-cell archives, unpacked together: their tables group by sample, the
    same sample's cells together across batches."""
    root = tmp_path / "reviewed"
    tables = {"reviewed-aaaa1111.csv": [("eosinophil/aaaa1111-000-a.jpg", "sample:H-1"),
                                        ("monocyte/aaaa1111-001-b.jpg", "sample:H-1")],
              "reviewed-bbbb2222.csv": [("eosinophil/bbbb2222-000-c.jpg", "sample:H-1"),
                                        ("monocyte/bbbb2222-001-d.jpg", "batch:bbbb2222ff")]}
    for table, rows in tables.items():
        for k, (file, _) in enumerate(rows):
            make_image(root / file, (20 * k, 60, len(table)))
        with open(root / table, "w", newline="") as f:
            csv.writer(f).writerows([["file", "group", "batch"],
                                     *[[file, group, table[9:17]] for file, group in rows]])
    assert data_lib.find_source_map(root, "auto") == root
    dataset = data_lib.grouped_image_folder(root, 0, "auto")
    assert dict(zip(dataset.files, dataset.groups)) == {
        "eosinophil/aaaa1111-000-a.jpg": "sample:H-1",
        "eosinophil/bbbb2222-000-c.jpg": "sample:H-1",
        "monocyte/aaaa1111-001-b.jpg": "sample:H-1",
        "monocyte/bbbb2222-001-d.jpg": "batch:bbbb2222ff"}
    assert dataset.sources_hold_many_cells


def test_a_source_map_that_cannot_be_used_says_why(tmp_path):
    root = tmp_path / "own"
    make_image(root / "eosinophil" / "a.jpg", (1, 2, 3))
    wrong_columns = tmp_path / "wrong.csv"
    wrong_columns.write_text("image,slide\neosinophil/a.jpg,s1\n")
    with pytest.raises(SystemExit, match="needs the columns file,group"):
        data_lib.grouped_image_folder(root, 0, str(wrong_columns))
    no_match = tmp_path / "other.csv"
    no_match.write_text("file,group\na.jpg,s1\n")  # not relative to the data folder
    with pytest.raises(SystemExit, match="names the source of none of the 1 images"):
        data_lib.grouped_image_folder(root, 0, str(no_match))


def test_a_split_saved_for_other_classes_is_refused(tmp_path):
    root = kaggle_like(tmp_path)
    dataset = data_lib.list_image_folder(root)
    data_lib.assign_groups(dataset, data_lib.find_source_map(root, "auto"))
    path = tmp_path / "splits.json"
    data_lib.save_split(data_lib.make_split(dataset, 0.34, 0.0, 0), path, dataset)
    assert data_lib.load_split(path, dataset)["val"]
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "classes": [*CLASSES, "basophil"]}))
    with pytest.raises(ValueError, match="was saved for the classes"):
        data_lib.load_split(path, dataset)


@pytest.mark.parametrize("option", ["source_map", "field_notes"])
def test_a_named_csv_that_is_missing_or_a_folder_is_a_clear_stop(tmp_path, image_folder, option):
    settings = {"source_map": "none", "field_notes": "none"}
    if option == "field_notes":  # read only beside a source map
        (tmp_path / "map.csv").write_text("file,group\n")
        settings["source_map"] = str(tmp_path / "map.csv")
    flag = "--" + option.replace("_", "-")
    for path, reason in ((tmp_path / "absent.csv", "no such file"),
                         (tmp_path, "a folder, not a CSV file")):
        with pytest.raises(SystemExit, match=f"{flag} {path}: {reason}"):
            data_lib.grouped_image_folder(image_folder, 0, **{**settings, option: str(path)})


def test_an_exclusion_list_is_read_from_text_or_a_disputes_json(tmp_path):
    for name in ("eosinophil", "neutrophil"):
        make_image(tmp_path / "data" / name / "a.jpg", (200, 60, 60))
    dataset = data_lib.list_image_folder(tmp_path / "data")
    assert data_lib.excluded_files("", dataset) == set()
    text = tmp_path / "list.txt"
    text.write_text("# audit of 5 Dec\n\n  eosinophil/a.jpg  \n")
    assert data_lib.excluded_files(str(text), dataset) == {"eosinophil/a.jpg"}
    report = tmp_path / "disputes.json"
    report.write_text(json.dumps({"files": ["neutrophil/a.jpg", "eosinophil/a.jpg"]}))
    assert data_lib.excluded_files(str(report), dataset) == {"neutrophil/a.jpg",
                                                             "eosinophil/a.jpg"}
    report.write_text(json.dumps({"disputed": []}))
    with pytest.raises(SystemExit, match='needs a "files" list'):
        data_lib.excluded_files(str(report), dataset)
    with pytest.raises(SystemExit, match="no such file"):
        data_lib.excluded_files(str(tmp_path / "missing.txt"), dataset)
    with pytest.raises(SystemExit, match="a folder, not a file list"):
        data_lib.excluded_files(str(tmp_path), dataset)


def test_an_archive_unpacked_into_its_own_folder_is_refused_not_read_as_a_class(tmp_path):
    """Finder, "Extract All" and `unzip -d NAME` put each reviewed-cells archive in a folder
    of its own: read as classes, the archives' names would be trained on."""
    for archive in ("cells-PT-001-reviewed", "cells-PT-002-reviewed"):
        make_image(tmp_path / "mac" / archive / "neutrophil" / "0.jpg", (200, 50, 50))
        (tmp_path / "mac" / archive / f"reviewed-{archive[9:12]}.csv").write_text("file,group\n")
    with pytest.raises(SystemExit, match=r"cells-PT-001-reviewed holds reviewed-001\.csv: it is "
                                         r"an unpacked reviewed-cells archive, not a class \(2 "
                                         r"such folder\(s\).*Move the contents of each"):
        data_lib.list_image_folder(tmp_path / "mac")
    # The same archives unpacked into the data folder itself: classes, and their tables read.
    make_image(tmp_path / "flat" / "neutrophil" / "0.jpg", (200, 50, 50))
    (tmp_path / "flat" / "reviewed-001.csv").write_text("file,group\nneutrophil/0.jpg,s:1\n")
    assert data_lib.list_image_folder(tmp_path / "flat").classes == ["neutrophil"]


def test_the_source_map_read_is_named_with_its_tables_and_groups(tmp_path):
    root = tmp_path / "cells"
    for name in CLASSES[:2]:
        for i in range(3):
            make_image(root / name / f"{i}.jpg", (40 * i, 90, 30))
    (root / "reviewed-a.csv").write_text("file,group\neosinophil/0.jpg,s:1\n"
                                         "lymphocyte/0.jpg,s:1\n")
    (root / "reviewed-b.csv").write_text("file,group\neosinophil/1.jpg,s:2\n")
    dataset = data_lib.grouped_image_folder(root, 0, "auto")
    assert dataset.source_tables == [str((root / "reviewed-a.csv").resolve()),
                                     str((root / "reviewed-b.csv").resolve())]
    assert data_lib.source_map_line(dataset) == (
        f"source map: 2 tables in {root.resolve()}, 2 groups, 3 of 6 images not named")
    plain = data_lib.grouped_image_folder(root, 0, "none")
    assert plain.source_tables == []
    assert data_lib.source_map_line(plain).startswith(
        "no source map: only byte-identical files are grouped")
