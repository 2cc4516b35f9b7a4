"""What ``--data`` names, as a sample: the data options of a run (:class:`DataOptions`) and the files
they resolve to.

``--data`` may be repeated; each value is a file, a folder (of images or audio clips, else of array
or text files) or a quoted glob (``'parts/*.npy'``, ``**`` reaches into sub-folders). A glob's
matches and a folder's files are taken in sorted order, values in the order given; a file named
twice is read once. All files of a sample are of one kind: ``.npy`` arrays, ``.npz`` archives,
text (``.txt``, ``.jsonl``), audio clips or images.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import DataError
from .images import ImageOptions

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
TEXT_EXTENSIONS = (".txt", ".jsonl")
KINDS = {".npy": "npy", ".npz": "npz", **{e: "text" for e in TEXT_EXTENSIONS},
         **{e: "audio" for e in AUDIO_EXTENSIONS}, **{e: "image" for e in IMAGE_EXTENSIONS}}
KIND_NAMES = {"npy": ".npy arrays", "npz": ".npz archives", "text": "text", "audio": "audio clips", "image": "images"}
GLOB_CHARACTERS = "*?["


@dataclass
class DataOptions:
    """The data options of a run: where the sample comes from and how it is prepared."""

    sources: tuple[str | Path, ...] = ()  # --data values: files, folders, quoted globs
    samples: int | None = None  # --samples: the first N samples (sorted order); None: all that fit
    max_length: int | None = None  # --max-length: tokens per text
    tokenizer: Path | None = None  # --tokenizer: a folder or tokenizer.json, for models without their own
    sample_rate: int | None = None  # --sample-rate: Hz audio is resampled to, for models without a feature extractor
    audio_seconds: float | None = None  # --audio-seconds: clips are padded / cropped to this length
    image: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self):
        if isinstance(self.sources, (str, Path)):
            self.sources = (self.sources,)
        self.sources = tuple(self.sources or ())
        if self.tokenizer is not None:
            self.tokenizer = Path(self.tokenizer)

    @property
    def given(self) -> bool:
        return bool(self.sources)

    def with_sources(self, *sources) -> DataOptions:
        return replace(self, sources=tuple(s for s in sources if s is not None))

    def paths(self, missing_ok: bool = False) -> list[Path]:
        """The files and folders ``sources`` name (globs expanded, sorted), each once; a source that
        names nothing is an error (``missing_ok``: left out, for checks that come before reading)."""
        found, seen = [], set()
        for source in self.sources:
            try:
                matched = _matches(source)
            except DataError:
                if missing_ok:
                    continue
                raise
            for path in matched:
                key = os.path.realpath(path)
                if key not in seen:
                    seen.add(key)
                    found.append(path)
        return found

    def read_paths(self, missing_ok: bool = False) -> list[Path]:
        """Every path a run with these options reads: the data and the --tokenizer."""
        return self.paths(missing_ok) + ([self.tokenizer] if self.tokenizer is not None else [])

    def fingerprint(self) -> dict:
        """What about the data changes a conversion's result (for the up-to-date record)."""
        values = asdict(self)
        values["sources"] = [os.path.realpath(p) for p in self.paths()] if self.sources else []
        values["tokenizer"] = os.path.realpath(self.tokenizer) if self.tokenizer is not None else None
        return values

    def where(self) -> Path | str:
        """How errors about the whole sample name it."""
        return Path(self.sources[0]) if len(self.sources) == 1 else ", ".join(str(s) for s in self.sources)


def _matches(source: str | Path) -> list[Path]:
    text = str(source)
    path = Path(os.path.expanduser(text))
    if path.exists():
        return [path]
    if any(c in text for c in GLOB_CHARACTERS):
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        if not matched:
            raise DataError("no file matches this pattern", path=text)
        return matched
    raise DataError("data file not found", path=path)


def looks_like_data(path: Path) -> bool:
    """A file of a data kind (an array, text, a clip, an image): never a model."""
    return Path(path).suffix.lower() in KINDS and not Path(path).is_dir()


@dataclass
class SampleFiles:
    """The files of a sample, all of one kind."""

    kind: str  # npy, npz, text, audio, image
    files: list[Path]


def sample_files(options: DataOptions) -> SampleFiles:
    """The files ``options`` name, folders expanded into their images or clips; one kind only."""
    files: list[Path] = []
    seen: set[str] = set()
    for path in options.paths():
        for f in _folder_members(path) if path.is_dir() else [path]:
            if os.path.realpath(f) not in seen:
                seen.add(os.path.realpath(f))
                files.append(f)
    kinds: dict[str, Path] = {}
    for f in files:
        kind = KINDS.get(f.suffix.lower())
        if kind is None:
            raise DataError("unsupported data file: use .npy or .npz (one array per input), text (.txt, .jsonl), "
                            "audio (" + ", ".join(AUDIO_EXTENSIONS) + "), images, or a folder of images or audio clips",
                            path=f)
        kinds.setdefault(kind, f)
    if len(kinds) > 1:
        (a, fa), (b, fb) = list(kinds.items())[:2]
        raise DataError(f"a sample holds one kind of data, but {fa} is {KIND_NAMES[a]} and {fb} is {KIND_NAMES[b]}",
                        path=options.where())
    return SampleFiles(next(iter(kinds)), files)


FOLDER_KINDS = (("image", "audio"), ("npy",), ("npz",), ("text",))  # what a folder stands for, first found wins


def _folder_members(folder: Path) -> list[Path]:
    """The folder's images or audio clips (its sub-folders' too); a folder without any: its .npy
    parts, else its .npz parts, else its text files. Other files (a README, labels.txt beside the
    images) are not data. Hidden files and folders are skipped."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in KINDS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for kinds in FOLDER_KINDS:
        members = [f for f in files if KINDS[f.suffix.lower()] in kinds]
        if members:
            return members
    raise DataError("the folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + "), audio clips ("
                    + ", ".join(AUDIO_EXTENSIONS) + "), .npy / .npz arrays or text files", path=folder)
