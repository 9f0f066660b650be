"""Datasets as file lists, source groups, and the saved, leak-checked split.

Images that are views of the same source smear (Kaggle augmentations) or byte-identical files
(PBC duplicates) form one group; a group never sits on two sides of a split. Source smears
that show overlapping fields of the same slide (BCCD has such pairs, most with the same white
cell in both) are one group too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hematovision.batch import decoded_chunks, image_files, is_hidden

SOURCE_MAP_NAME = "bccd_source_map.csv"
KAGGLE_MAP_COLUMNS = {"split", "class", "file", "bccd_source_image"}
FIELD_NOTES = Path("bccd") / "bccd_image_notes.csv"  # its same_field_of_view_as column
SPLITS = ("train", "val", "test")
# The tables of the app's reviewed-cell archives, unpacked into a data folder: each maps its
# images to their sample (`file,group`), so `--source-map auto` splits by sample.
REVIEWED_TABLES = "reviewed-*.csv"
# What make_split decides and splits.json keeps; extra_train is the run's, not the split's.
SPLIT_KEYS = (*SPLITS, "unassigned", "excluded_groups")


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    files: list[str]  # relative to root, "class/name.ext"
    labels: list[int]
    groups: list[str | None] = field(default_factory=list)  # None: source unknown
    left_out: list[str] = field(default_factory=list)  # sub-folders without images
    # A group is a source holding cells of many classes (a slide, a patient: a `file,group`
    # map), kept whole on one side; else one cell or one image (Kaggle's map, identical files),
    # which two labels make a conflict that is left out.
    sources_hold_many_cells: bool = False
    source_tables: list[str] = field(default_factory=list)  # the source map's files read

    def paths(self, files: list[str]) -> list[Path]:
        return [self.root / f for f in files]

    def label_of(self) -> dict[str, int]:
        return dict(zip(self.files, self.labels))


def list_image_folder(root: Path, max_per_class: int = 0) -> Dataset:
    """An ImageFolder tree: sorted class sub-folders, images found recursively (hidden files
    and archive folders such as __MACOSX left out). A sub-folder without images is no class:
    it is listed in `left_out`, since a class that has no image cannot be learned or scored."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder: expected one sub-folder of images per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(Path(p.name)))
    check_not_archive_folders(root, folders)
    found = {name: sorted(p.relative_to(root).as_posix() for p in image_files(root / name))
             for name in folders}
    classes = [name for name in folders if found[name]]
    if not classes:
        raise SystemExit(f"No class sub-folders with images in {root}: expected one sub-folder "
                         f"of images per class (e.g. {root}/neutrophil/*.jpg)")
    files, labels = [], []
    for index, name in enumerate(classes):
        kept = found[name][:max_per_class] if max_per_class else found[name]
        files += kept
        labels += [index] * len(kept)
    return Dataset(root, classes, files, labels,
                   left_out=[name for name in folders if not found[name]])


def check_not_archive_folders(root: Path, folders: list[str]) -> None:
    """Refuse class folders that are reviewed-cell archives unpacked each into its own folder
    (Finder, Windows "Extract All", `unzip -d NAME` do that): such a folder holds the archive's
    `reviewed-<batch>.csv` beside the real class folders, and read as a class it would train
    on the archives' names as classes, with their source tables ignored."""
    archives = {name: sorted(p.name for p in (root / name).glob(REVIEWED_TABLES))
                for name in folders}
    archives = {name: tables for name, tables in archives.items() if tables}
    if archives:
        name, tables = next(iter(archives.items()))
        raise SystemExit(
            f"{root}/{name} holds {tables[0]}: it is an unpacked reviewed-cells archive, not a "
            f"class ({len(archives)} such folder(s) in {root}). Move the contents of each "
            f"(its class folders and its reviewed-*.csv) up into {root}, or unpack the "
            f"archives there directly (`unzip -o ARCHIVE.zip -d {root}`), so that the class "
            "folders are the sub-folders of --data")


def extra_roots(setting: str) -> list[Path]:
    """The ImageFolder roots of a comma-separated `extra_data` setting ('' for none)."""
    return [Path(part.strip()) for part in setting.split(",") if part.strip()]


def list_extra(setting: str, classes: list[str], max_per_class: int = 0
               ) -> tuple[list[Path], list[int]]:
    """Paths and labels (indices into `classes`) of the images under the comma-separated
    ImageFolder roots in `setting`; folders of other classes are left out."""
    paths: list[Path] = []
    labels: list[int] = []
    for root in extra_roots(setting):
        extra = list_image_folder(root, max_per_class)
        kept = [(f, extra.classes[y]) for f, y in zip(extra.files, extra.labels)
                if extra.classes[y] in classes]
        if not kept:
            raise SystemExit(f"{root} has no images of the classes {classes}")
        paths += [root / f for f, _ in kept]
        labels += [classes.index(name) for _, name in kept]
    return paths, labels


def excluded_files(setting: str, dataset: Dataset) -> set[str]:
    """The files an `exclude_from_training` list names ('' for none): a text file of paths
    under the data root, one per line (# comments), or a JSON file with a "files" list (what
    `training.disputes` writes). A name that is not in the data is refused: a list made for
    other data, or a typo, would otherwise leave nothing out and say nothing."""
    if not setting:
        return set()
    path = given_file(setting, "exclude-from-training", "a file list", words="")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            names = json.loads(text)["files"]
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"--exclude-from-training {setting}: a JSON file needs a "
                             '"files" list (as training.disputes writes)') from None
    else:
        names = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    unknown = sorted(set(names) - set(dataset.files))
    if unknown:
        raise SystemExit(f"--exclude-from-training {setting}: {len(unknown)} of its "
                         f"{len(set(names))} images are not in {dataset.root} "
                         f"(e.g. {unknown[0]})")
    return set(names)


def given_file(setting: str, option: str, kind: str = "a CSV file",
               words: str = " (or give 'auto' or 'none')") -> Path:
    """A file named on the command line: it must be a file, said before anything is read.
    `words`: what else the option takes, said with the refusal."""
    path = Path(setting)
    if not path.is_file():
        raise SystemExit(f"--{option} {setting}: "
                         + (f"a folder, not {kind}" if path.is_dir() else "no such file")
                         + words)
    return path


def find_source_map(root: Path, setting: str) -> Path | None:
    """The source map of the data under `root`: a path, "none", or "auto" for Kaggle's map
    beside the data, else the data folder itself where reviewed-cell archives from the app
    were unpacked into it (their `reviewed-<batch>.csv` tables, read together)."""
    if setting == "none":
        return None
    if setting != "auto":
        return given_file(setting, "source-map")
    for folder in (root, root.parent):
        if (folder / SOURCE_MAP_NAME).is_file():
            return folder / SOURCE_MAP_NAME
    return root if any(root.glob(REVIEWED_TABLES)) else None


def find_field_notes(root: Path, setting: str) -> Path | None:
    """The table of smears that show overlapping fields of view: a path, "none", or "auto"
    for `bccd/bccd_image_notes.csv` beside the dataset's folder (the shared data layout)."""
    if setting == "none":
        return None
    if setting != "auto":
        return given_file(setting, "field-notes")
    for folder in (root.parent, root.parent.parent):
        if (folder / FIELD_NOTES).is_file():
            return folder / FIELD_NOTES
    return None


def same_field_groups(notes: Path, sources: set[str]) -> dict[str, str]:
    """{source: group name} joining the `sources` that the notes list as the same field of view,
    transitively (e.g. "BloodImage_00037+BloodImage_00038"); unlisted sources are left out.

    Only pairs of named sources are joined: two smears that each overlap a third image which
    is no source of this dataset are not thereby one cell."""
    parent = {s: s for s in sources}

    def root_of(s: str) -> str:
        while parent[s] != s:
            s = parent[s]
        return s

    with open(notes, newline="") as f:
        for row in csv.DictReader(f):
            image = Path(row["image"]).stem
            for other in (row.get("same_field_of_view_as") or "").split(";"):
                other = other.strip()
                if image in parent and other in parent:
                    parent[root_of(other)] = root_of(image)
    members: dict[str, list[str]] = defaultdict(list)
    for s in parent:
        members[root_of(s)].append(s)
    return {s: "+".join(sorted(members[root_of(s)]))
            for s in parent if len(members[root_of(s)]) > 1}


def assign_groups(dataset: Dataset, source_map: Path | None, field_notes: Path | None = None
                  ) -> None:
    """Group by source smear where a map names it (smears of one field of view together when
    `field_notes` lists them), else by file content (duplicates together)."""
    if source_map is not None:
        sources, named, many = read_source_map(Path(source_map), dataset.root.name)
        dataset.groups = [sources.get(rel) or None for rel in dataset.files]
        dataset.sources_hold_many_cells = many
        dataset.source_tables = [str(t.resolve()) for t in source_tables(Path(source_map))]
        if field_notes is not None:
            # All sources of the map, not only this split's: Kaggle's test and train are
            # joined where they overlap too, so a test group is one cell in every split.
            joined = same_field_groups(field_notes, named)
            dataset.groups = [joined.get(g, g) if g else None for g in dataset.groups]
    else:
        dataset.groups = [
            "sha256:" + hashlib.sha256((dataset.root / f).read_bytes()).hexdigest()
            for f in dataset.files
        ]


def source_tables(path: Path) -> list[Path]:
    """The files a source map reads: the file itself, or a data folder's reviewed-*.csv."""
    return sorted(path.glob(REVIEWED_TABLES)) if path.is_dir() else [path]


def source_map_line(dataset: Dataset) -> str:
    """One line on the source map a dataset was grouped by, for the training log."""
    if not dataset.source_tables:
        return "no source map: only byte-identical files are grouped (--source-map FILE)"
    tables = dataset.source_tables
    where = (f"{len(tables)} tables in {Path(tables[0]).parent}" if len(tables) > 1
             else tables[0])
    known = [g for g in dataset.groups if g is not None]
    return (f"source map: {where}, {len(set(known))} groups, "
            f"{len(dataset.files) - len(known)} of {len(dataset.files)} images not named")


def read_source_map(path: Path, split: str) -> tuple[dict[str, str], set[str], bool]:
    """({"class/name.ext": source}, every source the map names, whether a source holds cells of
    many classes) from a CSV with the columns `file,group` (file relative to the data folder;
    group: the slide, smear or patient an image came from: many cells), or the Kaggle map's
    `split,class,file,bccd_source_image`, whose rows of the `split` named like the data folder
    count (a source smear with one labelled white cell). A folder: its `reviewed-<batch>.csv`
    tables together (`file,group` each: the app's reviewed-cell archives, grouped by sample).
    An empty source means "unknown"."""
    tables = source_tables(path)
    sources: dict[str, str] = {}
    for table in tables:
        with open(table, newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" too
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            rows = list(reader)
        if {"file", "group"} <= columns:
            sources.update((row["file"], row["group"]) for row in rows)
        elif KAGGLE_MAP_COLUMNS <= columns and not path.is_dir():
            return ({f"{row['class']}/{row['file']}": row["bccd_source_image"]
                     for row in rows if row["split"] == split},
                    {row["bccd_source_image"] for row in rows} - {""}, False)
        else:
            raise SystemExit(
                f"{table}: a source map needs the columns file,group (or Kaggle's "
                f"{','.join(sorted(KAGGLE_MAP_COLUMNS))}); it has {','.join(sorted(columns))}")
    return sources, set(sources.values()) - {""}, True


def grouped_image_folder(root: Path, max_per_class: int, source_map: str,
                         field_notes: str = "none") -> Dataset:
    """`list_image_folder` with each file's source group assigned (`source_map`: a path,
    "auto" for the Kaggle map beside the data, or "none"; `field_notes`: see
    `find_field_notes`)."""
    source = find_source_map(Path(root), source_map)
    # Looked for even where no source map will read them: a notes path that is missing or a
    # folder is a mistake whatever the data, and refused before anything is read.
    notes = find_field_notes(Path(root), field_notes)
    dataset = list_image_folder(root, max_per_class)
    assign_groups(dataset, source, notes if source is not None else None)
    if source is not None and not any(dataset.groups):
        raise SystemExit(f"{source} names the source of none of the {len(dataset.files)} images "
                         f"under {root}: check its 'file' column (class/name.ext, relative to "
                         "the data folder)")
    return dataset


def make_split(dataset: Dataset, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Stratified split of whole groups; images of unknown source go to 'unassigned'.

    Groups whose files carry different labels are listed under 'excluded_groups' and left out.
    """
    rng = random.Random(seed)
    members: dict[str, list[int]] = defaultdict(list)
    unassigned = []
    for i, group in enumerate(dataset.groups):
        if group is None:
            unassigned.append(dataset.files[i])
        else:
            members[group].append(i)
    mixed = sorted(g for g, idx in members.items() if len({dataset.labels[i] for i in idx}) > 1)
    if dataset.sources_hold_many_cells and mixed:
        # Sources of many classes (slides, patients): each whole on one side.
        side, excluded = _split_sources(members, dataset.labels, val_fraction, test_fraction,
                                        rng), []
    else:
        # A group filed under two classes (the same image or cell with two labels) cannot be
        # scored fairly on either side, so it is excluded from every split.
        excluded = mixed
        for group in excluded:
            del members[group]
        side = _split_cells(members, dataset.labels, val_fraction, test_fraction, rng)
    split: dict[str, list[str]] = {name: [] for name in SPLITS}
    for group, idx in members.items():
        split[side[group]] += [dataset.files[i] for i in idx]
    split = {k: sorted(v) for k, v in split.items()}
    split["unassigned"] = sorted(unassigned)
    split["excluded_groups"] = excluded
    check_disjoint(split, dataset)
    return split


def _split_cells(members: dict[str, list[int]], labels: list[int], val_fraction: float,
                 test_fraction: float, rng: random.Random) -> dict[str, str]:
    """{group: side} for groups of one class each: per class, its groups shuffled and the
    fractions of them taken for validation and test."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for group, idx in members.items():
        by_class[labels[idx[0]]].append(group)
    side: dict[str, str] = {}
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        # At least one group of each class stays in train: a tiny class loses test first.
        n_val = min(_share(len(groups), val_fraction), len(groups) - 1)
        n_test = min(_share(len(groups), test_fraction), len(groups) - 1 - n_val)
        for k, group in enumerate(groups):
            side[group] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return side


def _split_sources(members: dict[str, list[int]], labels: list[int], val_fraction: float,
                   test_fraction: float, rng: random.Random) -> dict[str, str]:
    """{group: side} for sources holding cells of many classes, each kept whole: for each class
    one source holding it stays in train (the first in a seeded shuffle); then, in that order,
    each source goes to validation or test where its cells fill at least as much of that side's
    missing share of each class (fraction x the class's images) as they overshoot, else to
    train. A side given a fraction that got no source then takes the smallest one left in train
    (not one kept for a class): a split with no validation cannot stop early or calibrate."""
    counts = {g: Counter(labels[i] for i in idx) for g, idx in members.items()}
    order = sorted(members)
    rng.shuffle(order)
    side: dict[str, str] = {}
    for label in sorted({label for c in counts.values() for label in c}):
        if not any(label in counts[g] for g in side):
            side[next(g for g in order if label in counts[g] and g not in side)] = "train"
    total = sum(counts.values(), Counter())
    missing = {name: {label: fraction * n for label, n in total.items()}
               for name, fraction in (("val", val_fraction), ("test", test_fraction))
               if fraction > 0}

    def fill(name: str, group: str) -> tuple[float, float]:
        """(cells of `group` that `name` still misses, cells beyond that)."""
        wanted = [(n, max(missing[name][label], 0)) for label, n in counts[group].items()]
        return sum(min(n, w) for n, w in wanted), sum(max(n - w, 0) for n, w in wanted)

    kept = set(side)
    for group in [g for g in order if g not in side]:
        fills = {name: fill(name, group) for name in missing}
        best = max(fills, key=lambda name: fills[name][0] - fills[name][1], default=None)
        filled, beyond = fills.get(best, (0, 0))
        if filled > 0 and filled >= beyond:
            side[group] = best
            for label, n in counts[group].items():
                missing[best][label] -= n
        else:
            side[group] = "train"
    for name in missing:
        spare = [g for g in order if side[g] == "train" and g not in kept]
        if spare and name not in side.values():
            side[min(spare, key=lambda g: sum(counts[g].values()))] = name
    return side


def group_members(groups: list) -> list[np.ndarray]:
    """The positions of each group's members, one index array per distinct group: what
    resampling by source smear draws from (bootstrap intervals, ECE spreads)."""
    _, inverse = np.unique(np.array([str(g) for g in groups]), return_inverse=True)
    return [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]


def class_groups(dataset: Dataset, split: dict) -> dict[str, dict[str, int]]:
    """{class: {side: number of source groups of that class there}} for train, val and test."""
    group_of = dict(zip(dataset.files, dataset.groups))
    label_of = dataset.label_of()
    seen: dict[str, dict[str, set]] = {c: {name: set() for name in SPLITS}
                                       for c in dataset.classes}
    for name in SPLITS:
        for f in split.get(name, []):
            seen[dataset.classes[label_of[f]]][name].add(group_of[f])
    return {c: {name: len(groups) for name, groups in sides.items()} for c, sides in seen.items()}


def _share(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(n * fraction)) if n > 1 else 0


def check_disjoint(split: dict, dataset: Dataset) -> None:
    """Refuse a split where a file or a source group sits on two sides."""
    group_of = dict(zip(dataset.files, dataset.groups))
    seen: dict[str, str] = {}
    for name in SPLITS:
        for f in split.get(name, []):
            for key in (f"file:{f}", group_of.get(f)):
                if key is None:
                    continue
                if seen.setdefault(key, name) != name:
                    raise ValueError(f"{key} is in both {seen[key]} and {name}: the split leaks")


def save_split(split: dict, path: Path, dataset: Dataset) -> None:
    group_of = dict(zip(dataset.files, dataset.groups))
    payload = {
        "root": str(dataset.root),
        "classes": dataset.classes,
        "counts": {k: len(v) for k, v in split.items()},
        "groups": {k: len({group_of[f] for f in split[k]} - {None}) for k in SPLITS},
        **split,
    }
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def load_split(path: Path, dataset: Dataset) -> dict:
    saved = json.loads(Path(path).read_text())
    # Saved for other classes (a class folder emptied or added since), its labels are not
    # today's: a resumed run or its fold models would learn them under the wrong outputs.
    if saved.get("classes", dataset.classes) != dataset.classes:
        raise ValueError(f"{path} was saved for the classes {saved['classes']}; the data now "
                         f"has {dataset.classes}")
    split = {k: saved.get(k, []) for k in SPLIT_KEYS}
    check_disjoint(split, dataset)
    return split


def class_weights(labels: list[int], num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights normalised to a mean of 1 over the present classes."""
    counts = [labels.count(c) for c in range(num_classes)]
    present = [c for c in range(num_classes) if counts[c]]
    total = sum(counts)
    return {c: (total / (len(present) * counts[c]) if counts[c] else 0.0) for c in range(num_classes)}


def preprocessed_batches(paths: list[Path], size: int, crop: str):
    """Model inputs for image files, decoded and preprocessed as served, one stacked array per
    chunk in order. An unreadable file stops the run: training and validation images have no
    result to leave out."""
    for chunk in decoded_chunks(paths, size, crop):
        for path, array, error, _ in chunk:
            if array is None:
                raise SystemExit(f"{path}: {error}")
        yield np.stack([array for _, array, _, _ in chunk])
