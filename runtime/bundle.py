"""The dn2 bundle: one directory holding everything a detector needs, written atomically.

Layout::

    BUNDLE/
      dn2.json          manifest (schema below), written last
      model.onnx        the dn2 model, copied in
      bank.npy|bank.bin normal bank: numpy float32 [N, D] (allow_pickle=False) or hnswlib index
      group_bank.*      pooled normal groups (only with group scoring)
      patch_bank.*      normal patch features (only with the patch signal, ``signals.patch``)
      fit_report.json   kept / dropped / failed files, bank row -> image name

Manifest (``schema: "dn2-bundle"``, ``schema_version: 2``): the serialisation of the typed
objects of :mod:`dn2.runtime.manifest` (``Manifest``: ``model`` {file, sha256, arch, weights,
input, dim, precision, outputs}, ``bank`` {kind, file, sha256, n, dim, metric, M,
ef_construction, ef, seed}, ``score`` (a ScoreConfig: k, reduction, l2norm, jpeg_draft, color,
mode, combine), ``threshold`` {value, method, fpr, quantiles, scores, candidates, calibration},
``group`` (null or {size, pooling, k, bank, threshold, cov_trace_threshold, ...}), ``signals``
{global, patch} and ``view`` of view bundles, ``fit`` {config (the FitConfig), images,
failed, dropped, color, duplicates, augment, ...}, ``files`` {name: sha256} for every file but
the manifest). A schema-1 dn2.json is converted on read; other versions are refused.

Writing checks the target first (writable, not a file, not another folder), then goes to a
hidden temp directory beside it (same file system), fsyncs, and puts it in place: an existing
bundle is exchanged with the new one in one ``renameat2(RENAME_EXCHANGE)`` where Linux and the
file system allow, so a reader finds a whole bundle at the target at every instant (elsewhere:
two renames). A crash leaves the old bundle or the new one, plus at most a ``.NAME.tmp-*``
directory, which the next write to that target removes once its writer process is gone.
Loading checks the schema, every file's sha256, dims, metric and counts; each problem is a
``BundleError`` saying what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .bank import Bank, BankError, load_bank
from .bundleswap import clean_stale, install
from .errors import BundleError
from .manifest import Manifest, parse_manifest
from .paths import found, too_long
from .paths import found as describe
from .version import __version__

MANIFEST = "dn2.json"
MODEL_FILE = "model.onnx"
REPORT_FILE = "fit_report.json"
MAX_MANIFEST_BYTES = 64 << 20


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BundleError(
            f"output {out}: expected a bundle directory to create, found {found(out)}",
            param="output",
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(
            f"output {out}: expected a new path, an empty folder or an existing "
            f"bundle to replace, found a folder with other files (not replaced)",
            param="output",
        )


def check_output(output) -> Path:
    """Before any work: ``output`` can be written (a new path, an empty folder or a bundle to
    replace, under a writable folder). Also removes temp folders that dead writers left."""
    out = Path(output).absolute()
    long = too_long(out)
    if long:
        raise BundleError(
            f"output {out}: expected a path the OS accepts, found {long}", param="output"
        )
    _check_target(out)
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise BundleError(
            f"output {out}: expected a folder to write into, found {base} is {found(base)}",
            param="output",
        )
    try:
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=base))
        probe.rmdir()
    except OSError as exc:
        raise BundleError(
            f"output {out}: expected a writable folder, found {base} not "
            f"writable ({exc.strerror or exc})",
            param="output",
        ) from None
    clean_stale(out)
    return out


def write_bundle(
    output,
    model_path,
    manifest: Manifest,
    bank: Bank,
    group_bank: Optional[Bank] = None,
    report: Optional[Dict] = None,
    patch_bank: Optional[Bank] = None,
    extra: Optional[Dict[str, object]] = None,
    before_install: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write the bundle atomically; fills in files, checksums and bank parameters of
    ``manifest`` (a :class:`dn2.runtime.manifest.Manifest` whose bank references may be bare)
    and checks the result with the one schema before anything is put in place.
    ``extra``: more files, name -> numpy array (``.npy``) or JSON-able object (``.json``),
    digested like the others. ``before_install``: called with the finished temp folder just
    before it is put in place (e.g. to sign it)."""
    if not isinstance(manifest, Manifest):
        raise BundleError(
            f"write_bundle: expected a dn2.runtime.manifest.Manifest, found "
            f"{type(manifest).__name__}"
        )
    out = check_output(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        shutil.copyfile(model_path, tmp / MODEL_FILE)
        banks = {"bank": bank, "group_bank": group_bank, "patch_bank": patch_bank}
        refs = dict(manifest.banks())
        for stem, b in banks.items():
            if (b is None) != (stem not in refs):
                raise BundleError(
                    f"write_bundle: {stem}: expected a bank exactly where the manifest has a "
                    f"section for it, found {'a bank' if b is not None else 'none'}"
                )
            if b is not None:
                b.save(tmp / (stem + b.suffix))
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
        for name, obj in (extra or {}).items():
            if name.endswith(".npy"):
                np.save(tmp / name, obj, allow_pickle=False)
            else:
                (tmp / name).write_text(json.dumps(obj), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        placed = {
            stem: refs[stem].placed(b.params(), stem + b.suffix, files[stem + b.suffix])
            for stem, b in banks.items()
            if b is not None
        }
        model = dataclasses.replace(manifest.model, file=MODEL_FILE, sha256=files[MODEL_FILE])
        m = manifest.with_banks(placed).replace(
            model=model, files=files, dn2_version=__version__, converted_from=None
        )
        raw = json.loads(json.dumps(m.to_dict()))  # certainly JSON-able
        parse_manifest(raw, str(out))  # the writer's output passes the reader's schema
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=1, sort_keys=True)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if before_install is not None:
            before_install(tmp)
        install(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_manifest(bundle, manifest: Manifest) -> None:
    """Rewrite ``bundle``'s dn2.json from ``manifest`` (same files; e.g. a new threshold):
    checked by the schema, then a temp file renamed over the old one."""
    raw = json.loads(json.dumps(manifest.replace(converted_from=None).to_dict()))
    path = Path(bundle) / MANIFEST
    parse_manifest(raw, str(path.parent))
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    bank: Bank
    group_bank: Optional[Bank]
    patch_bank: Optional[Bank] = None

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model.file

    def report(self) -> Dict:
        p = self.path / REPORT_FILE
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def _expect(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise BundleError(f"bundle {where}: {msg}")


def read_manifest(path) -> Manifest:
    """Parse and check dn2.json and every file's checksum (no bank loaded): the typed
    manifest (a schema-1 dn2.json converted)."""
    p = Path(path)
    if not p.exists():
        raise BundleError(
            f"bundle {p}: expected a bundle directory written by dn2-fit, found no such path"
        )
    _expect(p.is_dir(), str(p), "expected a bundle directory, found a file")
    mpath = p / MANIFEST
    if not mpath.is_file():
        found = sorted(x.name for x in p.iterdir())
        half = ".tmp-" in p.name or bool(found)
        raise BundleError(
            f"bundle {p}: expected {MANIFEST}, found "
            + (
                f"only {found[:8]}: a half-written bundle (dn2-fit did not finish) or not a "
                f"bundle; fit again"
                if half
                else "an empty folder; run dn2-fit first"
            )
        )
    size = mpath.stat().st_size
    _expect(
        size <= MAX_MANIFEST_BYTES,
        str(p),
        f"expected {MANIFEST} of at most {MAX_MANIFEST_BYTES >> 20} MiB, found {size} bytes",
    )
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"bundle {p}: expected {MANIFEST} to be JSON, found invalid text ({exc})"
        ) from None
    except RecursionError:
        raise BundleError(
            f"bundle {p}: expected {MANIFEST} to be a manifest, found JSON nested too deep to read"
        ) from None
    m = parse_manifest(m, str(p))  # schema, types, ranges, cross-field rules: manifest.py
    for name, digest in sorted(m.files.items()):
        fp = p / name
        what = "it missing" if not os.path.lexists(fp) else describe(fp)  # a FIFO: never read
        _expect(
            fp.is_file(),
            str(p),
            f"expected file {name} (listed in {MANIFEST}), found "
            f"{what}: half-written or damaged bundle",
        )
        got = sha256_file(fp)
        _expect(
            got == digest,
            str(p),
            f"{name}: expected sha256 {digest}, found {got} "
            f"(the file changed after dn2-fit wrote it)",
        )
    return m


def load_bundle(path, trusted_key=None) -> Bundle:
    """Validate and load a bundle (model file checked by checksum; see Detector for the
    model's own metadata check). With a trusted public key (``trusted_key``, else the
    environment's ``DN2_TRUSTED_KEY``) the bundle must carry a valid signature by it, checked
    before anything else is read (:mod:`dn2.runtime.signing`). A bundle replaced while it was
    being read (the target's inode changed) is read once more."""
    p = Path(path)
    before = _inode(p)
    try:
        return _load_verified(p, trusted_key)
    except BundleError:
        if before is None or _inode(p) == before:
            raise
    return _load_verified(p, trusted_key)


def _load_verified(p: Path, trusted_key) -> Bundle:
    from .signing import trusted_key_path, verify_bundle

    key = trusted_key_path(trusted_key)
    if key is not None:
        if not p.is_dir():
            read_manifest(p)  # the usual "no such bundle" message
        verify_bundle(p, key)
    return _load_bundle(p)


def _inode(p: Path):
    try:
        st = os.stat(p)
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _load_bundle(p: Path) -> Bundle:
    m = read_manifest(p)
    try:
        banks = {stem: load_bank(p / ref.file, ref.params()) for stem, ref in m.banks()}
    except BankError as exc:
        raise BundleError(f"bundle {p}: {exc}") from None
    return Bundle(p, m, banks["bank"], banks.get("group_bank"), banks.get("patch_bank"))


def check_model_meta(m: Manifest, meta, where: str) -> None:
    """The model's own metadata must agree with the manifest's model section."""
    mod = m.model
    for what, want, got in (
        ("dim", mod.dim, meta.dim),
        ("input", mod.input, meta.input_size),
        ("arch", mod.arch, meta.arch),
    ):
        show = repr if what == "arch" else str
        _expect(
            want == got,
            where,
            f"model {what}: manifest expects {show(want)}, model.onnx says {show(got)}",
        )
    outs = tuple(meta.output_names)  # a backend may serve more outputs than the fit saw
    _expect(
        mod.outputs is None or set(mod.outputs) <= set(outs),
        where,
        f"model outputs: manifest expects {list(mod.outputs or ())}, the model has {list(outs)}",
    )
