"""The output files of one run: checked before any compute, written under partial names, committed together.

A run writes several files (class raster, confidence raster, polygons, statistics). Analysts judge a run by
what they find under the final names, so either every output of a run appears there or none does, and no
hidden ``.NAME.partial.EXT`` file outlives the run. A file that already exists under a final name is left
untouched until :meth:`OutputSet.commit` replaces it. GDAL/OGR/stdlib only: used by the CLI and inside QGIS.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

#: Files GDAL or SQLite may create beside a dataset (PAM metadata, external overviews and masks, journals).
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")

PathLike = str | os.PathLike


class OutputPathError(ValueError):
    """An output path that must not be written (it is an input, a folder, or in a place we cannot write)."""


def partial_path(path: PathLike) -> Path:
    """Temporary name used while ``path`` is being written: same folder (so the final rename is atomic), hidden,
    and the same extension (drivers such as GeoPackage check it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def partial_folder_path(path: PathLike) -> Path:
    """Temporary name of an output *folder* while it is written: ``.NAME.partial`` beside ``NAME``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def claim_partial_folder(final: PathLike, writer: str = "run") -> Path:
    """Create ``final``'s partial folder exclusively and return it: the caller owns it, and only it removes it.

    The same rule as the partial files of :class:`OutputSet`: never write into, or delete, a partial this run did
    not make. A partial that exists already belongs to another run (or was left by a killed one, which its
    owner or a person removes): ``OutputPathError`` says so in one sentence and nothing is touched.
    """
    partial = partial_folder_path(final)
    try:
        partial.mkdir()
    except FileExistsError:
        raise OutputPathError(f"another {writer} is writing {final} (its temporary folder {partial.name} exists; "
                              "if no other run is going on, remove that folder)") from None
    return partial


def sidecars(path: PathLike) -> list[Path]:
    """The sidecar files GDAL or SQLite may have created beside ``path`` (whether or not they exist)."""
    return [Path(f"{path}{suffix}") for suffix in SIDECAR_SUFFIXES]


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts, case-insensitive file systems
    except OSError:
        return False  # at least one of them does not exist (yet)


def _is_sidecar(path: Path) -> bool:
    return any(str(path).endswith(suffix) for suffix in SIDECAR_SUFFIXES)


def _check_folder(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: the folder {folder} does not exist")
    try:  # really try: permission bits, ACLs, read-only mounts and root all behave differently
        fd, probe = tempfile.mkstemp(prefix=".factseg-probe-", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: the folder {folder} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_paths(outputs: Sequence[PathLike | None], inputs: Sequence[PathLike]) -> None:
    """Refuse, before any compute, outputs that would destroy an input or cannot be written.

    ``outputs``: every file the run will write (None entries are skipped); ``inputs``: every file it reads (for a
    multi-file dataset, all its files; GDAL sidecars of inputs are not inputs). Raises :class:`OutputPathError`
    with one sentence for the first problem: an output that is (or resolves to, through links) an input, two
    outputs naming the same file, an existing folder, a missing folder, or a folder we cannot write in.
    """
    input_paths = [Path(p) for p in inputs if p is not None and str(p) and not _is_sidecar(Path(p))]
    seen: list[Path] = []
    for output in outputs:
        if output is None:
            continue
        if not str(output).strip():
            raise OutputPathError("an output path is empty")
        path = Path(output)
        for source in input_paths:
            if _same_file(path, source):
                raise OutputPathError(f"output {path} is the input {source}; choose another output name")
        for other in seen:
            if _same_file(path, other):
                raise OutputPathError(f"outputs {other} and {path} are the same file; give each output its own name")
        if path.is_dir():
            raise OutputPathError(f"output {path} is an existing folder; give a file name inside it")
        if path.exists() and not path.is_file():
            raise OutputPathError(f"output {path} exists and is not a regular file")
        _check_folder(path)
        seen.append(path)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # best effort: a cleanup must never hide the error that caused it


class _Backups:
    """Hard links to the files a commit is about to replace or remove, to put them back if the commit fails."""

    def __init__(self, targets: list[Path]) -> None:
        self.targets = targets
        self.existed = {t for t in targets if t.exists()}
        self.saved: dict[Path, Path] = {}
        for target in targets:
            if target.is_file():
                backup = target.with_name(f".{target.name}.factseg-previous")
                try:
                    backup.unlink(missing_ok=True)
                    os.link(target, backup)
                    self.saved[target] = backup
                except OSError:
                    pass  # no hard links here (FAT, some network shares): that file cannot be rolled back

    def restore(self) -> None:
        """Put every saved file back and remove the targets that did not exist before."""
        for target in self.targets:
            try:
                if target in self.saved:
                    os.replace(self.saved[target], target)
                elif target not in self.existed and target.is_file():
                    target.unlink()  # ours: it did not exist before the commit
            except OSError:
                pass  # best effort: the commit's own error is the one to report

    def drop(self) -> None:
        _remove(self.saved.values())


class OutputSet:
    """The outputs of one run, written under partial names and published together by :meth:`commit`.

    ``with OutputSet() as outputs: tmp = outputs.add(final); ...write tmp...; outputs.commit()``. Leaving the
    block without ``commit()`` (an exception, a signal, a forgotten commit) removes every partial file and its
    sidecars; files under the final names are replaced only by ``commit()``.
    """

    def __init__(self) -> None:
        self._finals: list[Path] = []
        self.committed = False

    @property
    def finals(self) -> list[Path]:
        """The final paths registered so far, in order."""
        return list(self._finals)

    def add(self, final: PathLike) -> Path:
        """Register ``final`` and return the partial path to write it under.

        A stale partial (left by a killed run) is removed on first registration; registering the same final path
        again returns the same partial without touching it, so a caller may register every output up front and
        a writer given the set may register it again.
        """
        if self.committed:
            raise RuntimeError("this OutputSet is already committed")
        final = Path(final)
        for known in self._finals:
            if known == final or _same_file(final, known):
                return partial_path(known)
        partial = partial_path(final)
        if partial.is_dir():
            raise OutputPathError(f"cannot write {final}: a folder {partial} is in the way of its temporary file")
        self._finals.append(final)
        _remove([partial, *sidecars(partial)])
        return partial

    def partial(self, final: PathLike) -> Path:
        """The partial path of a registered output."""
        final = Path(final)
        if final not in self._finals:
            raise KeyError(f"{final} is not an output of this set")
        return partial_path(final)

    def commit(self) -> list[Path]:
        """Rename every partial to its final name (with its sidecars); returns the final paths.

        Every partial must exist, or nothing is renamed. A stale sidecar of a replaced final file (e.g. old
        category names in ``.aux.xml``) is removed, so it cannot describe the new file. Files about to be replaced
        are first hard-linked to a hidden backup, so when a rename fails half-way (a folder created under a final
        name meanwhile, a full or read-only disk) the earlier outputs are rolled back: the old files return and
        the new ones go, and the run publishes nothing.
        """
        if self.committed:
            return self.finals
        missing = [f for f in self._finals if not partial_path(f).is_file()]
        if missing:
            self.discard()
            raise OutputPathError(f"output {missing[0]} was never written, so no output of this run was kept")
        moves = [(old, new) for final in self._finals
                 for old, new in zip([partial_path(final), *sidecars(partial_path(final))], [final, *sidecars(final)])]
        replaced = _Backups([new for old, new in moves if old.exists() or new.is_file()])
        try:
            for old, new in moves:
                if old.exists():
                    os.replace(old, new)
                elif new.is_file():
                    new.unlink()
        except OSError as exc:
            replaced.restore()
            self.discard()
            raise OutputPathError(f"could not publish {new} ({exc.strerror}), so no output of this run was kept; "
                                  "files that were there before are unchanged") from None
        replaced.drop()
        self.committed = True
        return self.finals

    def discard(self, final: PathLike | None = None) -> None:
        """Remove the partial files and their sidecars: of every output, or of ``final`` only (safe to call more
        than once; files under final names are never touched)."""
        for known in self._finals if final is None else [Path(final)]:
            partial = partial_path(known)
            _remove([partial, *sidecars(partial)])

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()
