"""Signed bundles: an Ed25519 signature over the manifest and every file's digest.

``sign_bundle(bundle, private_key)`` writes ``BUNDLE/dn2.sig`` (JSON)::

    {"schema": "dn2-signature", "version": 1, "algorithm": "ed25519",
     "key_id": first 16 hex digits of sha256(raw public key),
     "manifest_sha256": sha256 of dn2.json's bytes, "manifest": dn2.json as signed,
     "files": {name: sha256} for EVERY file of the bundle folder but dn2.sig,
     "signature": base64 Ed25519 signature of the canonical JSON of all fields above}

``verify_bundle(bundle, trusted)`` checks, before anything else of the bundle is read: the
signature file is there, names the trusted key and verifies with it; dn2.json is byte for byte
the signed one (else it names the fields that changed, from the signed copy); the folder holds
exactly the signed files, each with its signed digest. Every refusal is a ``BundleError``
naming the file or field.

The trusted public key comes from ``trusted_key=`` (Detector.load, watch), the CLI's
``--trusted-key FILE``, or the environment variable ``DN2_TRUSTED_KEY`` (a PEM file path).
Where none is configured, unsigned bundles load as before. Keys are PEM files: the private key
PKCS#8 (mode 0600), the public one SubjectPublicKeyInfo; ``generate_keypair`` writes both.
Needs ``cryptography`` (``pip install 'dn2[sign]'``), imported only here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .errors import BundleError, Dn2Error, MissingExtraError

SIGNATURE = "dn2.sig"
MANIFEST = "dn2.json"
ENV_KEY = "DN2_TRUSTED_KEY"
SIG_SCHEMA = "dn2-signature"
_FIELDS = ("schema", "version", "algorithm", "key_id", "manifest_sha256", "manifest", "files")
PathLike = Union[str, os.PathLike]


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError("cryptography", "sign", "signed bundles") from None
    return serialization, ed25519, InvalidSignature


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False)


def _canonical(obj) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _raw_public(pub) -> bytes:
    serialization, _, _ = _crypto()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub) -> str:
    return hashlib.sha256(_raw_public(pub)).hexdigest()[:16]


def generate_keypair(
    private_path: PathLike, public_path: Optional[PathLike] = None
) -> Tuple[Path, Path]:
    """Write a new Ed25519 key pair (private PEM 0600, public PEM); refuses to overwrite."""
    serialization, ed25519, _ = _crypto()
    priv_p = Path(private_path)
    pub_p = Path(public_path) if public_path else priv_p.with_name(priv_p.name + ".pub")
    for p in (priv_p, pub_p):
        if os.path.lexists(p):
            raise Dn2Error(f"{p}: expected a new key file, found one already (not replaced)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_p.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_p, pub_p


def _read_pem(path: PathLike, what: str) -> bytes:
    from .paths import regular_file

    p = regular_file(path, f"{what} (a PEM file)", Dn2Error)
    with open(p, "rb") as f:
        return f.read(1 << 16)


def load_private_key(path: PathLike):
    serialization, ed25519, _ = _crypto()
    data = _read_pem(path, "an Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise Dn2Error(
            f"{path}: expected an unencrypted Ed25519 private key (PEM), found "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable data'}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise Dn2Error(f"{path}: expected an Ed25519 private key, found {type(key).__name__}")
    return key


def load_public_key(path: PathLike):
    serialization, ed25519, _ = _crypto()
    data = _read_pem(path, "an Ed25519 public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise Dn2Error(
            f"{path}: expected an Ed25519 public key (PEM), found "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable data'}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise Dn2Error(f"{path}: expected an Ed25519 public key, found {type(key).__name__}")
    return key


def trusted_key_path(explicit: Optional[PathLike] = None) -> Optional[str]:
    """The configured trusted key: ``explicit``, else $DN2_TRUSTED_KEY, else None."""
    if explicit:
        return os.fspath(explicit)
    env = os.environ.get(ENV_KEY, "").strip()
    return env or None


def _bundle_files(bundle: Path) -> Dict[str, str]:
    out = {}
    for p in sorted(bundle.iterdir()):
        if p.name == SIGNATURE:
            continue
        if p.is_symlink() or not p.is_file():
            raise BundleError(
                f"bundle {bundle}: expected only regular files, found {p.name} "
                f"({'a symlink' if p.is_symlink() else 'not a regular file'})"
            )
        out[p.name] = _sha256(p)
    return out


def sign_bundle(bundle: PathLike, private_key: PathLike) -> Path:
    """Sign the bundle folder (it must load: a signature vouches for a valid bundle)."""
    from .bundle import read_manifest

    b = Path(bundle)
    read_manifest(b)  # digests, schema, types: never sign a broken bundle
    key = load_private_key(private_key)
    raw = (b / MANIFEST).read_bytes()
    body = {
        "schema": SIG_SCHEMA,
        "version": 1,
        "algorithm": "ed25519",
        "key_id": key_id(key.public_key()),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "manifest": json.loads(raw),
        "files": _bundle_files(b),
    }
    body["signature"] = base64.b64encode(key.sign(_canonical(body))).decode("ascii")
    tmp = b / f".{SIGNATURE}.tmp-{os.getpid()}"
    tmp.write_text(_dump(body), encoding="utf-8")
    os.replace(tmp, b / SIGNATURE)
    return b / SIGNATURE


def _changed_fields(old, new, prefix: str = "") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in new:
                out.append(f"{name} (removed)")
            elif k not in old:
                out.append(f"{name} (added)")
            else:
                out.extend(_changed_fields(old[k], new[k], name))
        return out
    if type(old) is not type(new) or old != new:
        return [f"{prefix or 'the whole manifest'}: signed {_short(old)}, found {_short(new)}"]
    return []


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "..."


def verify_bundle(bundle: PathLike, trusted: PathLike) -> Dict:
    """Refuse (BundleError) anything but the bundle exactly as the trusted key signed it."""
    serialization, ed25519, InvalidSignature = _crypto()
    b = Path(bundle)
    where = f"bundle {b}"
    pub = load_public_key(trusted)
    sig_p = b / SIGNATURE
    if not sig_p.is_file() or sig_p.is_symlink():
        raise BundleError(
            f"{where}: expected a signature ({SIGNATURE}) by the trusted key "
            f"{key_id(pub)} ({trusted}), found an unsigned bundle; sign it with "
            f"dn2-sign BUNDLE --key PRIVATE_KEY"
        )
    try:
        text = sig_p.read_bytes()[: 1 << 26].decode("utf-8")
        sig = json.loads(text)
        if not isinstance(sig, dict) or sig.get("schema") != SIG_SCHEMA:
            raise ValueError("not a dn2 signature")
        if _dump(sig) != text:  # one spelling only: no byte of the file is free to change
            raise ValueError("not in the form dn2-sign writes (edited by hand?)")
        body = {k: sig[k] for k in _FIELDS}
        blob = base64.b64decode(sig["signature"], validate=True)
        if not isinstance(body["files"], dict) or not isinstance(body["manifest"], dict):
            raise ValueError("files and manifest must be objects")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(
            f"{where}: {SIGNATURE}: expected a dn2 signature file, found unreadable content ({exc})"
        ) from None
    if body["algorithm"] != "ed25519" or body["key_id"] != key_id(pub):
        raise BundleError(
            f"{where}: {SIGNATURE}: expected a signature by the trusted key "
            f"{key_id(pub)}, found one by key {body['key_id']!r}"
        )
    try:
        pub.verify(blob, _canonical(body))
    except (InvalidSignature, ValueError):
        raise BundleError(
            f"{where}: {SIGNATURE}: the signature does not verify with the "
            f"trusted key {key_id(pub)}: the signature file was altered"
        ) from None
    mpath = b / MANIFEST
    raw = mpath.read_bytes() if mpath.is_file() else b""
    if hashlib.sha256(raw).hexdigest() != body["manifest_sha256"]:
        try:
            now = json.loads(raw)
            fields = _changed_fields(body["manifest"], now) or ["formatting only"]
        except (ValueError, UnicodeDecodeError, RecursionError):
            fields = ["it is no longer valid JSON" if raw else "it is missing"]
        raise BundleError(
            f"{where}: {MANIFEST} changed after signing: "
            + "; ".join(fields[:5])
            + (f" (+{len(fields) - 5} more)" if len(fields) > 5 else "")
        )
    signed = body["files"]
    present = {p.name for p in b.iterdir() if p.name != SIGNATURE}
    for name in sorted(present - set(signed)):
        raise BundleError(
            f"{where}: {name}: expected only signed files, found one added after signing"
        )
    for name, digest in sorted(signed.items()):
        if name not in present:
            raise BundleError(f"{where}: {name}: signed, found it missing")
        p = b / name
        if p.is_symlink() or not p.is_file():
            raise BundleError(
                f"{where}: {name}: expected the signed regular file, found a "
                f"{'symlink' if p.is_symlink() else 'special file'}"
            )
        got = _sha256(p)
        if got != digest:
            raise BundleError(
                f"{where}: {name} changed after signing (sha256 signed "
                f"{digest[:16]}..., found {got[:16]}...)"
            )
    return sig
