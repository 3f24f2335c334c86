"""Macular disease challenge sets, read in their official layouts (datasets.md s. 18, 19)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fundbench.api.definitions import DatasetDefinition
from fundbench.api.errors import DataError
from fundbench.builtin.readers.common import (
    dataset_dir,
    find_file,
    frame,
    image_index,
    images_in,
    origin,
    read_table,
    require_columns,
    resolve_image,
)
from fundbench.builtin.readers.multidisease import (
    class_folder_root,
    integral,
    locate,
    read_class_folders,
)


def read_adam(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """ADAM / iChallenge-AMD training set: ``Training400/{AMD,Non-AMD}/`` (89 A*.jpg / 311
    N*.jpg), possibly under ``AMD-Training400/`` (datasets.md s. 18). The class is the
    folder. A sibling ``Training400/`` holding only ``Fovea_location.xlsx`` is skipped: the
    folder used is the one that holds the class folders. Validation and test labels are
    not read (their file names are unverified), so the split is seeded over images."""
    root = dataset_dir(definition, data_root)
    base = class_folder_root(definition, root, "ADAM Training400")
    return frame(read_class_folders(base), definition, base)


def _images_here(folder: Path, name: str) -> bool:
    return folder.name.lower() == name.lower() and bool(images_in(folder, recursive=False))


def read_palm(definition: DatasetDefinition, data_root: Path | None) -> pd.DataFrame:
    """PALM / iChallenge-PM (datasets.md s. 19).

    Training: ``PALM-Training400/[PALM-Training400/]{H,N,P}0001.jpg``; the raw label is the
    first letter of the file name (P = pathologic myopia; H = high myopia and N = normal
    are both "not PM", mapped in the definition). When ``PALM-Validation-GT/
    PM_Label_and_Fovea_Location.xlsx`` (``ID,imgName,Label,...``) is present, the 400
    ``PALM-Validation400`` images it labels (0/1) are the test split and val is carved from
    training; without it the training images get a seeded split."""
    root = dataset_dir(definition, data_root)
    train = locate(root, lambda d: _images_here(d, "PALM-Training400"))
    if train is None:
        raise DataError(
            f"{root}: no 'PALM-Training400' folder with images found; unpack the training zip"
        )
    gt = find_file(root, "PM_Label_and_Fovea_Location.xlsx", required=False)
    rows = [
        {
            "path": str(image.resolve()),
            "label": image.name[:1].upper(),
            "origin": f"{image} (class from the first letter of the file name)",
            **({"split": "train"} if gt else {}),
        }
        for image in images_in(train, recursive=False)
    ]
    if gt is not None:
        table = read_table(gt)
        require_columns(table, gt, ["imgName", "Label"])
        images = locate(root, lambda d: _images_here(d, "PALM-Validation400"))
        folder = images or root / "PALM-Validation400"
        index = image_index(folder) if images else {}
        for name, value, row in zip(
            table["imgName"], table["Label"], table["source_row"], strict=True
        ):
            rows.append(
                {
                    "path": resolve_image(index, name, folder),
                    "label": integral(value),
                    "split": "test",
                    "origin": origin(gt, row, "Label"),
                }
            )
    return frame(rows, definition, train)


FORMATS = {
    "adam": (read_adam, "ADAM / iChallenge-AMD Training400/{AMD,Non-AMD}/"),
    "palm": (
        read_palm,
        "PALM / iChallenge-PM: Training400 (H/N/P) + Validation400 with PM_Label xlsx as test",
    ),
}
