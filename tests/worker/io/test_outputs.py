"""worker.io.outputs: outputs checked before compute, written as partials, published together or not at all."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.io.outputs import OutputPathError, OutputSet, check_output_paths, partial_path, sidecars


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits, but not sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_partial_path_is_hidden_beside_the_target_with_the_same_extension(tmp_path):
    assert partial_path(tmp_path / "classes.tif") == tmp_path / ".classes.partial.tif"
    assert partial_path("out/objects.gpkg") == Path("out/.objects.partial.gpkg")


def test_good_outputs_pass_and_create_nothing(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"pixels")
    existing = tmp_path / "old.tif"
    existing.write_bytes(b"an earlier result")
    check_output_paths([tmp_path / "new.tif", None, existing, str(tmp_path / "o.gpkg")], [source])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "old.tif"]  # the write probe is gone


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink", "dotdot"])
def test_an_output_that_is_an_input_is_refused(tmp_path, monkeypatch, how):
    source = tmp_path / "data" / "in.tif"
    source.parent.mkdir()
    source.write_bytes(b"user data")
    monkeypatch.chdir(tmp_path)
    output = {
        "same": source,
        "relative": Path("data/in.tif"),
        "dotdot": tmp_path / "data" / ".." / "data" / "in.tif",
        "symlink": tmp_path / "link.tif",
        "hardlink": tmp_path / "hard.tif",
    }[how]
    if how == "symlink":
        output.symlink_to(source)
    if how == "hardlink":
        os.link(source, output)
    with pytest.raises(OutputPathError, match=r"is the input .*in\.tif; choose another output name"):
        check_output_paths([tmp_path / "fine.tif", output], [source])
    assert source.read_bytes() == b"user data"


def test_a_symlinked_input_is_recognised_through_the_link(tmp_path):
    real = tmp_path / "real.tif"
    real.write_bytes(b"x")
    (tmp_path / "alias.tif").symlink_to(real)
    with pytest.raises(OutputPathError, match="is the input"):
        check_output_paths([real], [tmp_path / "alias.tif"])


def test_sidecars_of_inputs_are_not_inputs(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"x")
    aux = tmp_path / "in.tif.aux.xml"
    aux.write_text("<PAMDataset/>")
    check_output_paths([tmp_path / "out.tif"], [source, aux])  # a dataset's GetFileList() lists its sidecars


def test_two_outputs_with_the_same_name_are_refused(tmp_path):
    with pytest.raises(OutputPathError, match="are the same file"):
        check_output_paths([tmp_path / "a.tif", tmp_path / "." / "a.tif"], [])


def test_folders_and_unwritable_places_are_refused(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputPathError, match="is an existing folder"):
        check_output_paths([tmp_path / "adir"], [])
    with pytest.raises(OutputPathError, match="the folder .*missing.* does not exist"):
        check_output_paths([tmp_path / "missing" / "o.tif"], [])
    with pytest.raises(OutputPathError, match="is not writable"):
        check_output_paths([unwritable_folder(tmp_path) / "o.tif"], [])
    with pytest.raises(OutputPathError, match="empty"):
        check_output_paths([""], [])


def test_commit_publishes_every_output_with_its_sidecars(tmp_path):
    raster, vector = tmp_path / "c.tif", tmp_path / "o.gpkg"
    raster.write_bytes(b"old raster")
    Path(f"{raster}.aux.xml").write_text("old category names")
    with OutputSet() as outputs:
        tmp_raster, tmp_vector = outputs.add(raster), outputs.add(vector)
        assert tmp_raster == partial_path(raster) and outputs.partial(vector) == tmp_vector
        tmp_raster.write_bytes(b"new raster")
        tmp_vector.write_bytes(b"polygons")
        Path(f"{tmp_vector}.aux.xml").write_text("vector metadata")
        assert raster.read_bytes() == b"old raster" and not vector.exists()  # untouched until commit
        assert outputs.commit() == [raster, vector]
    assert raster.read_bytes() == b"new raster" and vector.read_bytes() == b"polygons"
    assert not Path(f"{raster}.aux.xml").exists()  # stale names of the replaced raster would mislabel it
    assert Path(f"{vector}.aux.xml").read_text() == "vector metadata"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "o.gpkg", "o.gpkg.aux.xml"]


def test_an_exception_removes_every_partial_and_keeps_old_finals(tmp_path):
    raster = tmp_path / "c.tif"
    raster.write_bytes(b"old raster")
    with pytest.raises(RuntimeError, match="polygonize failed"):
        with OutputSet() as outputs:
            partial = outputs.add(raster)
            partial.write_bytes(b"half")
            for sidecar in sidecars(partial):
                sidecar.write_bytes(b"gdal or sqlite litter")
            outputs.add(tmp_path / "o.gpkg").write_bytes(b"half")
            raise RuntimeError("polygonize failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]
    assert raster.read_bytes() == b"old raster"


def test_leaving_without_commit_or_a_missing_partial_publishes_nothing(tmp_path):
    with OutputSet() as outputs:
        outputs.add(tmp_path / "a.tif").write_bytes(b"a")
    assert list(tmp_path.iterdir()) == []
    with OutputSet() as outputs:
        outputs.add(tmp_path / "a.tif").write_bytes(b"a")
        outputs.add(tmp_path / "b.json")  # never written
        with pytest.raises(OutputPathError, match=r"b\.json was never written"):
            outputs.commit()
    assert list(tmp_path.iterdir()) == []


def test_add_clears_a_stale_partial_once_and_keeps_what_was_written(tmp_path):
    stale = partial_path(tmp_path / "a.tif")
    stale.write_bytes(b"left by a killed run")
    outputs = OutputSet()
    assert outputs.add(tmp_path / "a.tif") == stale and not stale.exists()
    stale.write_bytes(b"this run's pixels")
    assert outputs.add(tmp_path / "." / "a.tif") == stale and stale.read_bytes() == b"this run's pixels"
    assert outputs.finals == [tmp_path / "a.tif"]
    partial_path(tmp_path / "b.tif").mkdir()
    with pytest.raises(OutputPathError, match="is in the way"):
        outputs.add(tmp_path / "b.tif")


def test_discard_of_one_output_keeps_the_others_and_survives_a_folder_in_the_way(tmp_path):
    with OutputSet() as outputs:
        outputs.add(tmp_path / "a.tif").write_bytes(b"a")
        outputs.add(tmp_path / "b.gpkg").write_bytes(b"b")
        outputs.discard(tmp_path / "b.gpkg")
        assert partial_path(tmp_path / "a.tif").exists() and not partial_path(tmp_path / "b.gpkg").exists()
        partial_path(tmp_path / "b.gpkg").mkdir()  # someone else's folder: left alone, no error
        outputs.discard()
    assert [p.name for p in tmp_path.iterdir()] == [".b.partial.gpkg"]


def test_a_rename_failing_half_way_rolls_the_earlier_outputs_back(tmp_path):
    raster, vector, stats = tmp_path / "c.tif", tmp_path / "o.gpkg", tmp_path / "s.json"
    raster.write_bytes(b"old raster")
    Path(f"{raster}.aux.xml").write_text("old names")
    with OutputSet() as outputs:
        outputs.add(raster).write_bytes(b"new raster")
        Path(f"{outputs.partial(raster)}.aux.xml").write_text("new names")
        outputs.add(stats).write_text("{}")
        outputs.add(vector).write_bytes(b"polygons")
        vector.mkdir()  # another program takes the final name after the check, before the commit
        with pytest.raises(OutputPathError, match=r"could not publish .*o\.gpkg .*no output of this run was kept"):
            outputs.commit()
    assert raster.read_bytes() == b"old raster" and Path(f"{raster}.aux.xml").read_text() == "old names"
    assert not stats.exists() and vector.is_dir() and list(vector.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c.tif.aux.xml", "o.gpkg"]


def test_a_successful_commit_leaves_no_backup(tmp_path):
    raster = tmp_path / "c.tif"
    raster.write_bytes(b"old")
    with OutputSet() as outputs:
        outputs.add(raster).write_bytes(b"new")
        outputs.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["c.tif"] and raster.read_bytes() == b"new"
