"""Failure injection for run folders and checkpoints (docs/reliability.md).

Every case runs the digits MLP (SST, 12 steps, checkpoints at 4, 8 and 12) and either ends in
one clear error that names the culprit, with the folder as it was, or recovers to the final
weights of an uninterrupted run, bit for bit. Kills are real ``SIGKILL``s of a forked copy of
this process (torch is already imported there, so a case takes a second, not an import).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparse_spectral.training.checkpoint as checkpoint
import sparse_spectral.training.runner as runner
from sparse_spectral.cli import main
from sparse_spectral.tasks.images import IMAGES, ImagesSettings
from sparse_spectral.training.checkpoint import CheckpointError, latest_checkpoint
from sparse_spectral.training.divergence import DivergenceGuard, TrainingDiverged
from sparse_spectral.training.loggers import JsonlLogger
from sparse_spectral.training.manifest import MANIFEST, write_manifest
from sparse_spectral.training.runfolder import LOCK_FILE, RunFolderError, RunLock

STEPS = 12
#: The kill and second-writer cases fork this process and rely on flock (POSIX).
posix = pytest.mark.skipif(not hasattr(os, "fork") or os.name != "posix",
                           reason="needs fork and flock")


def digits(out, **changes) -> ImagesSettings:
    values = dict(dataset="digits", hidden=[16], rank=4, epochs=None,
                  num_training_steps=STEPS, batch_size=32, warmup_steps=2, eval_every=4,
                  save_every=4, lr=3e-3, iteration_interval=3, output_dir=str(out))
    return ImagesSettings.from_dict({**values, **changes})


@pytest.fixture(scope="module")
def data():
    return IMAGES.prepare_data(digits("unused"))


def run(out, data, resume=False, **changes):
    return train_run_quiet(digits(out, **changes), data, resume)


def train_run_quiet(settings, data, resume=False):
    return runner.train_run(IMAGES, settings, data=data, resume=resume, progress=False)


def final_weights(run_dir, step=STEPS) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted run: its folder (read-only use) and its final weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(out, data)
    return out, final_weights(out)


def died_after(reference_dir: Path, target: Path, step: int) -> Path:
    """A copy of the reference run as if it had been killed right after checkpoint ``step``
    (later checkpoints gone; the log keeps its later lines, as a kill leaves it)."""
    shutil.copytree(reference_dir, target)
    root = target / "checkpoints"
    for path in root.glob("step_*"):
        if int(path.name.split("_")[1]) > step:
            shutil.rmtree(path)
    (root / "latest").write_text(f"step_{step:06d}\n")
    (target / "summary.json").unlink()
    return target


def eval_steps(run_dir) -> list[int]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "val_loss" in r]


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path}: bare {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------- kill -9
def _forked(body) -> int:
    """Run ``body()`` in a forked child; return the signal that ended it (0: it exited)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            body()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _dies_at(name, step_of_save):
    """Patch ``checkpoint.<name>`` (in the child) to die when saving step ``step_of_save``:
    before the call (``before``) or after it (``after``)."""
    def patch(where):
        real = getattr(checkpoint, name)

        def wrapped(*args, **kwargs):
            saving = any(f"step_{step_of_save:06d}" in str(a) for a in args)
            if saving and where == "before":
                _die()
            out = real(*args, **kwargs)
            if saving and where == "after":
                _die()
            return out

        setattr(checkpoint, name, wrapped)
    return patch


def _renamed_then_dies(step: int):
    """Die right after checkpoint ``step``'s directory is renamed into place."""
    real = os.replace

    def wrapped(src, dst):
        real(src, dst)
        if Path(dst).name == f"step_{step:06d}":
            _die()

    os.replace = wrapped  # the child's own os module


def _latest_dies():
    """Die inside the ``latest`` pointer's atomic write of step 8 (its temp file written)."""
    real = checkpoint.atomic_write

    def wrapped(path, write):
        def dying(tmp):
            write(tmp)
            if "step_000008" in Path(tmp).read_text():
                _die()
        return real(path, dying)

    checkpoint.atomic_write = wrapped


KILL_POINTS = {
    # inside checkpoint 8's save: the model written, state.pt not yet
    "after model file": lambda: _dies_at("save_model", 8)("after"),
    # every file written and checksummed, the directory not yet renamed into place
    "before rename": lambda: _dies_at("write_manifest", 8)("after"),
    # renamed into place, the latest pointer not yet moved (still step 4)
    "before latest": lambda: _renamed_then_dies(8),
    # the new pointer written to its temporary file, not yet renamed over the old one
    "inside latest": _latest_dies,
}


@posix
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_inside_a_checkpoint_write_resumes_bit_exact(point, reference, data, tmp_path):
    out = tmp_path / "run"

    def child():
        KILL_POINTS[point]()
        run(out, data)

    assert _forked(child) == signal.SIGKILL
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(out, data, resume=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "taking over the lock of pid" in messages  # the killed run's lock
    if leftovers:  # its temporary files were swept before the resume wrote anything
        assert "temporary file(s)" in messages and leftovers[0] in messages
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same_weights(final_weights(out), reference[1])
    assert eval_steps(out) == [4, 8, 12]  # the log trimmed to the checkpoint, then continued


@posix
@pytest.mark.parametrize("delay", [0.15, 0.6, 1.1])
def test_kill_at_a_random_moment_resumes_bit_exact(delay, reference, data, tmp_path):
    out = tmp_path / "run"
    pid = os.fork()
    if pid == 0:
        try:
            run(out, data)
        finally:
            os._exit(0)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if latest_checkpoint(out) is None:  # killed before its first checkpoint
            with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
                run(out, data, resume=True)
            run(out, data, overwrite=True)
        else:
            run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])


# ---------------------------------------------------------------------- concurrent writers
@posix
def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(data, tmp_path, capsys):
    out = tmp_path / "run"
    pid = os.fork()
    if pid == 0:  # a run that sits inside its step-4 save until killed
        try:
            real = checkpoint.save_model

            def slow(*args, **kwargs):
                if "step_000004" in str(args[1]):
                    time.sleep(60)
                return real(*args, **kwargs)

            checkpoint.save_model = slow
            run(out, data)
        finally:
            os._exit(0)
    try:
        for _ in range(600):  # until the child holds the lock and sits in its save
            if list((out / "checkpoints").glob(".step_000004.*")):
                break
            time.sleep(0.05)
        before = snapshot(out)
        holder = f"pid {pid} on host {socket.gethostname()}"
        named = re.escape(f"being written by another run ({holder}")
        with pytest.raises(RunFolderError, match=named):
            run(out, data)
        with pytest.raises(RunFolderError, match=named):
            run(out, data, resume=True)
        with pytest.raises(RunFolderError, match="being written by another run"):
            RunLock(out).acquire()  # the lock itself, past the early check
        # the command line: one line on stderr, exit 2
        args = ["train", "images", "--dataset", "digits", "--hidden", "16", "--rank", "4",
                "--epochs", "1",
                "--output_dir", str(out), "--no_progress", "--overwrite"]
        assert main(args) == 2
        assert f"sst: error: {out} is being written by another run ({holder}" \
            in capsys.readouterr().err
        assert snapshot(out) == before
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {pid} .* no longer "
                                         "running"):
        run(out, data, overwrite=True)  # its half-written step 4 was swept, the run replaced
    assert latest_checkpoint(out).name == "step_000012"


# ---------------------------------------------------------------------- the folder policy
def test_a_new_run_never_silently_replaces_an_old_one(reference, data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"already holds a run \(metrics.jsonl, "
                                             r"summary.json, checkpoints/\); pass --resume"):
        run(out, data, num_training_steps=8)
    assert snapshot(out) == before
    with pytest.raises(ValueError, match="--resume .* and --overwrite .*: give one of them"):
        run(out, data, resume=True, overwrite=True)
    # --overwrite: the old run's files go first (its step-12 checkpoint included)
    run(out, data, num_training_steps=8, overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["latest", "step_000004", "step_000008"]
    assert eval_steps(out) == [4, 8]
    assert (out / "notes.txt").read_text() == "mine"  # not a run's file: kept


def test_resume_without_a_checkpoint_changes_nothing(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n')
    before = snapshot(out)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        run(out, data, resume=True)
    assert snapshot(out) == before
    with pytest.raises(FileNotFoundError, match="does not exist: no checkpoint"):
        run(tmp_path / "nowhere", data, resume=True)
    assert not (tmp_path / "nowhere").exists()


def test_output_dir_that_is_a_file_or_unwritable(data, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match=r"--output_dir .*file is a file, not a folder"):
        run(tmp_path / "file", data)
    with pytest.raises(RunFolderError, match=r"lies under .*file, which is a file"):
        run(tmp_path / "file" / "run", data)
    locked = tmp_path / "readonly"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
    else:  # root writes through a read-only mode: inject the refusal the OS would give
        import sparse_spectral.training.runfolder as runfolder

        real_open = os.open

        def refusing(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(runfolder.os, "open", refusing)
    try:
        with pytest.raises(RunFolderError, match=r"could not write the run folder's lock "
                                                 r".*readonly/\.lock: Permission denied"):
            run(locked, data)
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_compare_refuses_an_earlier_comparison_before_training(data, tmp_path):
    from sparse_spectral.training.compare import run_compare

    out = tmp_path / "cmp"
    settings = digits(out, num_training_steps=4, save_every=0)
    run_compare(IMAGES, settings, ["full", "sst"], progress=False)
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"sst compare: the output folder already holds "
                                             r"results \(.*results.json"):
        run_compare(IMAGES, settings, ["full", "sst"], progress=False)
    assert snapshot(out) == before  # refused before the first run
    again = run_compare(IMAGES, digits(out, num_training_steps=4, save_every=0,
                                       overwrite=True), ["sst"], progress=False)
    assert list(again["methods"]) == ["sst"]
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["sst"]


# ---------------------------------------------------------------------- damaged checkpoints
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped bit in model": (lambda c: _flip(c / "model.safetensors"), "does not match"),
    "flipped bit in state": (lambda c: _flip(c / "state.pt"), "does not match"),
    "truncated model": (lambda c: _truncate(c / "model.safetensors"), "truncated"),
    "emptied state": (lambda c: (c / "state.pt").write_bytes(b""), "0 bytes"),
    "deleted model": (lambda c: (c / "model.safetensors").unlink(), "is missing"),
    "deleted state": (lambda c: (c / "state.pt").unlink(), "is missing"),
    "deleted manifest": (lambda c: (c / MANIFEST).unlink(), "manifest.json is missing"),
    "garbage manifest": (lambda c: (c / MANIFEST).write_text("{nope"), "unreadable"),
    # consistent checksums of unreadable content (a writer bug, not a disk)
    "garbage state, fresh manifest": (
        lambda c: ((c / "state.pt").write_bytes(b"\x80\x02garbage"), write_manifest(c)),
        "state.pt is unreadable"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_passes_over_a_damaged_checkpoint(damage, reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 8)
    inflict, reason = DAMAGE[damage]
    inflict(out / "checkpoints" / "step_000008")
    with pytest.warns(UserWarning, match=f"resuming from .*step_000004, the newest intact "
                                         f"checkpoint; passed over: .*step_000008.*{reason}"):
        run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])
    assert eval_steps(out) == [4, 8, 12]


POINTERS = {
    "into another run": ("../../other/checkpoints/step_000012", "may not lead out"),
    "an absolute path": ("/tmp/step_000012", "not a checkpoint name"),
    "a missing step": ("step_000099", "step_000099, which is missing"),
}


@pytest.mark.parametrize("pointer", sorted(POINTERS))
def test_a_latest_pointer_is_confined_to_its_run(pointer, reference, data, tmp_path):
    shutil.copytree(reference[0], tmp_path / "other")  # what the pointer would lead to
    out = died_after(reference[0], tmp_path / "run", 8)
    text, reason = POINTERS[pointer]
    (out / "checkpoints" / "latest").write_text(text + "\n")
    with pytest.warns(UserWarning, match=f"resuming from .*run/checkpoints/step_000008.*"
                                         f"{reason}"):
        run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])


def test_a_checkpoint_step_that_links_elsewhere_is_not_used(reference, data, tmp_path):
    shutil.copytree(reference[0], tmp_path / "other")
    out = died_after(reference[0], tmp_path / "run", 8)
    shutil.rmtree(out / "checkpoints" / "step_000008")
    (out / "checkpoints" / "step_000008").symlink_to(tmp_path / "other" / "checkpoints"
                                                     / "step_000008")
    with pytest.warns(UserWarning, match="resuming from .*step_000004.*or a link"):
        run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])


def test_no_intact_checkpoint_is_one_error_naming_each(reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 8)
    _flip(out / "checkpoints" / "step_000008" / "model.safetensors")
    (out / "checkpoints" / "step_000004" / "state.pt").unlink()
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from: .*"
                                              r"step_000008/model.safetensors does not match.*"
                                              r"step_000004/state.pt is missing"):
        run(out, data, resume=True)
    assert snapshot(out) == before  # the log was not trimmed


def _rewrite_state(step_dir: Path, change) -> None:
    state = torch.load(step_dir / "state.pt", weights_only=True)
    change(state)
    torch.save(state, step_dir / "state.pt")
    write_manifest(step_dir)  # consistent checksums: only the content check can tell


def test_content_that_checksums_cannot_catch(reference, data, tmp_path):
    # an emptied optimizer state would resume with fresh moments: refused, the older used
    out = died_after(reference[0], tmp_path / "a", 8)
    _rewrite_state(out / "checkpoints" / "step_000008",
                   lambda s: s["optimizer"].update(state={}))
    with pytest.warns(UserWarning, match="passed over: .*the optimizer state is empty after "
                                         "8 update"):
        run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])
    # a model file without a tensor, or with another shape: one error before any write
    for name, change in (("missing", lambda w, k: w.pop(k)),
                         ("shape", lambda w, k: w.__setitem__(k, torch.zeros(3, 3)))):
        out = died_after(reference[0], tmp_path / name, 8)
        step = out / "checkpoints" / "step_000008"
        weights = load_file(step / "model.safetensors")
        key = sorted(weights)[0]
        change(weights, key)
        save_file(weights, step / "model.safetensors")
        write_manifest(step)
        before = snapshot(out)
        pattern = {"missing": f"missing tensor\\(s\\) {key}",
                   "shape": f"shape of {key} \\[3, 3\\] in the checkpoint"}[name]
        with pytest.raises(CheckpointError, match=f"model.safetensors does not fit this run's "
                                                  f"model: {pattern}"):
            run(out, data, resume=True)
        assert snapshot(out) == before


# ---------------------------------------------------------------------- full disk
def test_a_full_disk_keeps_the_previous_checkpoint(reference, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = checkpoint.torch.save

    def full(obj, path, *args, **kwargs):
        if "step_000008" in str(Path(path).parent):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_000008 \(No "
                                              r"space left on device\); the latest checkpoint "
                                              r"is still step_000004"):
        run(out, data)
    monkeypatch.setattr(checkpoint.torch, "save", real)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])


def test_a_full_disk_under_the_log_and_the_summary(data, tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    real_init = JsonlLogger.__init__

    def on_full_disk(self, path, resume_step=None):
        real_init(self, path, resume_step)
        self._file.close()
        self._file = open("/dev/full", "a")

    monkeypatch.setattr(JsonlLogger, "__init__", on_full_disk)
    with pytest.raises(RunFolderError, match=r"could not write the metrics log .*metrics.jsonl:"
                                             r" No space left on device"):
        run(tmp_path / "log", data)
    monkeypatch.setattr(JsonlLogger, "__init__", real_init)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "atomic_write_json", full)
    with pytest.raises(RunFolderError, match=r"could not write the summary .*summary.json: No "
                                             r"space left"):
        run(tmp_path / "summary", data)
    assert latest_checkpoint(tmp_path / "summary").name == "step_000012"  # resumable


# ---------------------------------------------------------------------- the log and summary
def test_the_summary_covers_the_whole_run_across_resumes(reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 4)
    run(out, data, resume=True)
    summary = strict_json(out / "summary.json")
    assert [c["step"] for c in summary["curve"]] == eval_steps(out) == [4, 8, 12]
    expected = strict_json(reference[0] / "summary.json")
    assert summary["curve"] == expected["curve"]
    moved = {"output.output_dir": [str(reference[0]), str(out)]}  # copied: a moved folder
    assert summary["resumes"] == [{"step": 4, "checkpoint": "step_000004", "changed": moved}]
    # resuming the finished run changes no figure and writes strict JSON
    run(out, data, resume=True)
    again = strict_json(out / "summary.json")
    for key in ("curve", "grad_optimizer_bytes", "step_time_s", "test_accuracy", "val_loss"):
        assert again[key] == summary[key], key
    assert again["step_time_s"] > 0 and again["grad_optimizer_bytes"] > 0
    assert [r["step"] for r in again["resumes"]] == [4, 12]


def test_a_torn_last_log_line_is_dropped_and_a_bad_one_named(reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 8)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train_lo')  # the kill came mid-line
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped its torn last line"):
        run(out, data, resume=True)
    assert_same_weights(final_weights(out), reference[1])
    bad = died_after(reference[0], tmp_path / "bad", 8)
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(bad)
    with pytest.raises(RunFolderError, match=r"metrics.jsonl line 3 is not a JSON object"):
        run(bad, data, resume=True)
    assert snapshot(bad) == before


def test_stale_temporaries_are_swept_on_start(reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 8)
    litter = [out / "checkpoints" / ".step_000012.x1y2", out / "checkpoints" / ".latest.ab.tmp",
              out / ".summary.json.cd.tmp", out / "checkpoints" / ".step_000016.partial"]
    for path in litter:
        if "step_" in path.name:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"half")
        else:
            path.write_text("half")
    with pytest.warns(UserWarning, match=r"removed 4 temporary file\(s\)"):
        run(out, data, resume=True)
    assert not any(p.exists() for p in litter)


def test_files_are_fsynced_before_the_rename_that_publishes_them(data, tmp_path, monkeypatch):
    import sparse_spectral.training.manifest as manifest

    events = []
    for module, name in ((manifest, "fsync_file"), (manifest, "fsync_dir"),
                         (checkpoint, "fsync_dir")):
        real = getattr(module, name)

        def record(path, real=real, name=name):
            events.append((name, Path(path).name))
            return real(path)

        monkeypatch.setattr(module, name, record)
    real_replace = os.replace

    def replace(src, dst):
        events.append(("rename", Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    run(tmp_path / "run", data, num_training_steps=4)
    rename = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == "step_000004")
    before = {e[1] for e in events[:rename] if e[0] == "fsync_file"}
    assert before == {"model.safetensors", "state.pt", MANIFEST}
    assert events[rename - 1][0] == "fsync_dir"  # the new directory's entries
    assert events[rename + 1] == ("fsync_dir", "checkpoints")  # the rename itself


# ---------------------------------------------------------------------- resume settings
def test_a_resume_refuses_changed_settings_and_applies_allowed_ones(reference, data, tmp_path):
    out = died_after(reference[0], tmp_path / "run", 8)
    before = snapshot(out)
    with pytest.raises(ValueError) as info:
        run(out, data, resume=True, lr=1e-2, seed=3, rank=2, iteration_interval=5,
            hidden=[24])
    message = str(info.value)
    for part in ("optim.lr: checkpoint 0.003, now 0.01", "seed: checkpoint 0, now 3",
                 "method.rank: checkpoint 4, now 2", "method.interval: checkpoint 3, now 5",
                 "hidden: checkpoint [16], now [24]", "may change only: "):
        assert part in message, message
    assert snapshot(out) == before
    # num_training_steps (extending the run) and the frequencies may change, and are recorded
    run(out, data, resume=True, num_training_steps=16, eval_every=6, save_every=8)
    assert latest_checkpoint(out).name == "step_000016"
    state = torch.load(latest_checkpoint(out) / "state.pt", weights_only=True)
    assert state["settings"]["schedule"]["num_training_steps"] == 16
    summary = strict_json(out / "summary.json")
    assert summary["resumes"][0]["changed"] == {
        "eval.eval_every": [4, 6], "output.save_every": [4, 8],
        "schedule.num_training_steps": [12, 16],
        "output.output_dir": [str(reference[0]), str(out)]}
    assert [c["step"] for c in summary["curve"]] == [4, 8, 12, 16]
    with pytest.raises(ValueError, match="num_training_steps 10 is below the checkpoint's "
                                         "step 16"):
        run(out, data, resume=True, num_training_steps=10, eval_every=6, save_every=8)


# ---------------------------------------------------------------------- divergence
def test_the_spike_rule_is_lenient_and_always_stops_non_finite():
    guard = DivergenceGuard(10.0)
    for step, loss in enumerate([2.3, 1.0, 0.01, 0.5, 0.2], start=1):  # 50x best, < first
        guard.check_loss(step, loss)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 6: train loss 3 is above "
                                               r"10 x the best so far \(0.01 at step 3\)"):
        guard.check_loss(6, 3.0)
    off = DivergenceGuard(0)
    for step, loss in enumerate([2.3, 1e9], start=1):
        off.check_loss(step, loss)
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        off.check_loss(3, float("nan"))
    with pytest.raises(TrainingDiverged, match=r"non-finite evaluation at step 4 \(val_loss inf"):
        off.check_eval(4, {"val_loss": float("inf"), "val_accuracy": 0.5})
    with pytest.raises(ValueError, match="divergence_factor=0.5 must be 0 .* or a number > 1"):
        DivergenceGuard(0.5)


def test_a_run_that_diverges_without_nan_exits_nonzero(data, tmp_path, capsys):
    with pytest.raises(TrainingDiverged, match="the run diverged at step"):
        run(tmp_path / "run", data, lr=1e3)
    assert main(["train", "images", "--dataset", "digits", "--hidden", "16", "--rank", "4",
                 "--epochs", "1", "--lr", "1e3", "--output_dir", str(tmp_path / "cli"),
                 "--no_progress"]) == 2
    assert "sst: error: the run diverged at step" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "summary.json").exists()


def _poisoning(monkeypatch, at_step: int, where: str):
    """Make the run's method write a NaN into a weight or a moment after step ``at_step``."""
    real = runner.build_method

    def build(*args, **kwargs):
        method = real(*args, **kwargs)
        after = method.after_step

        def poisoned(step, optimizer=None):
            after(step, optimizer)
            if step == at_step:
                param = next(p for p in optimizer.param_groups[0]["params"]
                             if optimizer.state.get(p))
                target = param if where == "weight" else next(
                    v for v in optimizer.state[param].values()
                    if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1)
                with torch.no_grad():
                    target.view(-1)[0] = float("nan")

        method.after_step = poisoned
        return method

    monkeypatch.setattr(runner, "build_method", build)


@pytest.mark.parametrize("where", ["weight", "moment"])
def test_non_finite_state_is_never_published(where, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _poisoning(monkeypatch, 8, where)
    with pytest.raises(TrainingDiverged, match=r"non-finite values in 1 tensor\(s\) after step 8"
                                               r" \(.*\); checkpoint step 8 was not saved. Last "
                                               r"good checkpoint: .*step_000004"):
        run(out, data, eval_every=0)
    assert latest_checkpoint(out).name == "step_000004"
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_non_finite_evaluation_stops_before_its_checkpoint(data, tmp_path, monkeypatch):
    real = IMAGES.evaluator

    def evaluator(settings, data):
        evaluate = real(settings, data)

        def poisoned(model):
            metrics = evaluate(model)
            return {**metrics, "val_loss": float("nan")} if poisoned.calls == 1 else metrics

        poisoned.calls = 0

        def counting(model):
            out = poisoned(model)
            poisoned.calls += 1
            return out

        return counting

    monkeypatch.setattr(type(IMAGES), "evaluator", lambda self, s, d: evaluator(s, d))
    with pytest.raises(TrainingDiverged, match=r"non-finite evaluation at step 8 \(val_loss nan"
                                               r"\).*Last good checkpoint: .*step_000004"):
        run(tmp_path / "run", data)
    assert latest_checkpoint(tmp_path / "run").name == "step_000004"


def test_sst_at_a_huge_lr_never_saves_nan_weights(tmp_path, tmp_path_factory, monkeypatch):
    """The issue's case: SST on TinyShakespeare at lr 1e6 wrote NaN weights into the
    checkpoint it called last good (44 tensors)."""
    from engine_helpers import shakespeare_excerpt

    from sparse_spectral.tasks.lm import LM, LMSettings

    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))
    corpus = shakespeare_excerpt(tmp_path_factory, 40000)
    settings = LMSettings.from_dict(dict(
        text=str(corpus), model="gpt_micro", rank=4, block_size=16, batch_size=4,
        num_training_steps=12, warmup_steps=2, eval_every=100, eval_tokens=512, save_every=3,
        lr=1e6, divergence_factor=0, output_dir=str(tmp_path / "lm"),
        method_options={"iteration_interval": 2}))
    with pytest.raises(TrainingDiverged, match=r"non-finite values in \d+ tensor\(s\) after "
                                               r"step 3 .*Last good checkpoint: none"):
        runner.train_run(LM, settings, progress=False)
    assert latest_checkpoint(tmp_path / "lm") is None
