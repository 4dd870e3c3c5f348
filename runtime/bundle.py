"""The dn2 bundle: one directory holding everything a detector needs, written atomically.

Layout::

    BUNDLE/
      dn2.json          manifest (schema below), written last
      model.onnx        the dn2 model, copied in
      bank.npy|bank.bin normal bank: numpy float32 [N, D] (allow_pickle=False) or hnswlib index
      group_bank.*      pooled normal groups (only with group scoring)
      patch_bank.*      normal patch features (only with the patch signal, ``signals.patch``)
      fit_report.json   kept / dropped / failed files, bank row -> image name

Manifest (``schema: "dn2-bundle"``, ``schema_version: 1``): ``dn2_version``, ``model``
{file, sha256, arch, weights, input, dim, precision}, ``bank`` {kind, file, sha256, n, dim,
metric, M, ef_construction, ef, seed}, ``fit`` {images, failed, dropped, cleaned_fraction,
kmeans, seed, ...}, ``score`` {k, reduction, l2norm, jpeg_draft (absent in older bundles:
false), color ('gray': every input is scored converted to gray; absent: 'color')},
``threshold`` {value, method, fpr, quantiles, candidates, calibration}, ``group`` (null
or {size, pooling, source, n_groups, k, bank {...}, threshold {...}, cov_trace_threshold {...}}),
``files`` {name: sha256} for every file but the manifest.

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
from .manifest import validate_manifest
from .paths import found, too_long
from .paths import found as describe
from .version import __version__

SCHEMA = "dn2-bundle"
SCHEMA_VERSION = 1
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
            f"--output {out}: expected a bundle directory to create, found {found(out)}"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(
            f"--output {out}: expected a new path, an empty folder or an existing "
            f"bundle to replace, found a folder with other files (not replaced)"
        )


def check_output(output) -> Path:
    """Before any work: ``output`` can be written (a new path, an empty folder or a bundle to
    replace, under a writable folder). Also removes temp folders that dead writers left."""
    out = Path(output).absolute()
    long = too_long(out)
    if long:
        raise BundleError(f"--output {out}: expected a path the OS accepts, found {long}")
    _check_target(out)
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise BundleError(
            f"--output {out}: expected a folder to write into, found {base} is {found(base)}"
        )
    try:
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=base))
        probe.rmdir()
    except OSError as exc:
        raise BundleError(
            f"--output {out}: expected a writable folder, found {base} not "
            f"writable ({exc.strerror or exc})"
        ) from None
    clean_stale(out)
    return out


def write_bundle(
    output,
    model_path,
    manifest: Dict,
    bank: Bank,
    group_bank: Optional[Bank] = None,
    report: Optional[Dict] = None,
    patch_bank: Optional[Bank] = None,
    extra: Optional[Dict[str, object]] = None,
    before_install: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write the bundle atomically; fills in files, checksums and bank parameters.
    ``extra``: more files, name -> numpy array (``.npy``) or JSON-able object (``.json``),
    digested like the others. ``before_install``: called with the finished temp folder just
    before it is put in place (e.g. to sign it)."""
    out = check_output(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        m = json.loads(json.dumps(manifest))  # a copy that is certainly JSON-able
        shutil.copyfile(model_path, tmp / MODEL_FILE)
        m["model"]["file"] = MODEL_FILE
        sections = [("bank", "bank", bank)]
        if group_bank is not None:
            sections.append(("group", "group_bank", group_bank))
        if patch_bank is not None:
            sections.append(("signals.patch", "patch_bank", patch_bank))
        for key, stem, b in sections:
            name = stem + b.suffix
            b.save(tmp / name)
            sec = _bank_section(m, key)
            sec.update(b.params(), file=name)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
        for name, obj in (extra or {}).items():
            if name.endswith(".npy"):
                np.save(tmp / name, obj, allow_pickle=False)
            else:
                (tmp / name).write_text(json.dumps(obj), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        m["model"]["sha256"] = files[MODEL_FILE]
        m["bank"]["sha256"] = files[m["bank"]["file"]]
        for key, _, _ in sections[1:]:
            sec = _bank_section(m, key)
            sec["sha256"] = files[sec["file"]]
        m.update(schema=SCHEMA, schema_version=SCHEMA_VERSION, dn2_version=__version__, files=files)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(m, f, indent=1, sort_keys=True)
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


def _bank_section(m: Dict, key: str) -> Dict:
    """The manifest dict describing the bank of ``key`` (bank, group, signals.patch)."""
    if key == "bank":
        return m["bank"]
    if key == "group":
        return m["group"].setdefault("bank", {})
    return m["signals"]["patch"].setdefault("bank", {})


@dataclass
class Bundle:
    path: Path
    manifest: Dict
    bank: Bank
    group_bank: Optional[Bank]
    patch_bank: Optional[Bank] = None

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    def report(self) -> Dict:
        p = self.path / REPORT_FILE
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def _expect(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise BundleError(f"bundle {where}: {msg}")


def read_manifest(path) -> Dict:
    """Parse and check dn2.json and every file's checksum (no bank loaded)."""
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
    _expect(
        isinstance(m, dict) and m.get("schema") == SCHEMA,
        str(p),
        f"expected schema {SCHEMA!r}, found {m.get('schema') if isinstance(m, dict) else m!r}",
    )
    ver = m.get("schema_version")
    _expect(
        type(ver) is int and ver == SCHEMA_VERSION,
        str(p),
        f"expected schema_version {SCHEMA_VERSION}, found {ver!r} (written by dn2 "
        f"{m.get('dn2_version')}, this is dn2 {__version__})",
    )
    validate_manifest(m, str(p))  # types, ranges, cross-field rules: one schema (manifest.py)
    for name, digest in sorted(m["files"].items()):
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
        bank = load_bank(p / m["bank"]["file"], m["bank"])
        g = m.get("group")
        gbank = load_bank(p / g["bank"]["file"], g["bank"]) if g else None
        ps = (m.get("signals") or {}).get("patch")
        pbank = load_bank(p / ps["bank"]["file"], ps["bank"]) if ps else None
    except BankError as exc:
        raise BundleError(f"bundle {p}: {exc}") from None
    return Bundle(p, m, bank, gbank, pbank)


def check_model_meta(m: Dict, meta, where: str) -> None:
    """The model's own metadata must agree with the manifest's model section."""
    mod = m["model"]
    _expect(
        meta.dim == mod.get("dim"),
        where,
        f"model dim: manifest expects {mod.get('dim')}, model.onnx says {meta.dim}",
    )
    _expect(
        meta.input_size == mod.get("input"),
        where,
        f"model input: manifest expects {mod.get('input')}, model.onnx says {meta.input_size}",
    )
    _expect(
        meta.arch == mod.get("arch"),
        where,
        f"model arch: manifest expects {mod.get('arch')!r}, model.onnx says {meta.arch!r}",
    )
