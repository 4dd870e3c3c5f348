"""Bank files are checked before a native loader sees them: no crafted byte crashes hnswlib."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dn2.runtime.bank import BankError, build_bank, load_bank
from dn2.runtime.bankfile import HNSW_HEADER, check_hnsw_file, check_npy_file
from dn2.tools.bench.bank import gaussian_mixture


@pytest.fixture
def hnsw_file(tmp_path):
    x, _ = gaussian_mixture(300, 16, seed=4)
    b = build_bank(x, "hnsw", M=4, ef_construction=20, ef=10)
    p = tmp_path / "bank.bin"
    b.save(p)
    return p, b.params()


def patched(src, dst, off, fmt, value):
    b = bytearray(src.read_bytes())
    struct.pack_into(fmt, b, off, value)
    dst.write_bytes(bytes(b))
    return dst


@pytest.mark.parametrize(
    "off,fmt,value,says",
    [
        (96, "<I", 0xFFFF, "level-0 links, at most 8"),  # element 0's neighbour count
        (72, "<Q", 0, "expected M in [2, 10000], found M=0"),
        (64, "<Q", 4, "maxM0"),
        (16, "<Q", 10**9, "manifest says n=300"),
        (24, "<Q", 1 << 40, "bytes per element"),
        (48, "<i", 30, "top level"),
        (52, "<I", 299, "entry point"),
        (100, "<I", 10**6, "links to 1000000 on level 0"),
        (80, "<d", 0.0, "level multiplier"),
    ],
)
def test_crafted_header_and_links_are_refused(hnsw_file, tmp_path, off, fmt, value, says):
    p, params = hnsw_file
    bad = patched(p, tmp_path / "bad.bin", off, fmt, value)
    with pytest.raises(BankError, match="not a consistent hnswlib index") as e:
        load_bank(bad, params)
    assert says in str(e.value)


def test_truncated_and_extended_files_are_refused(hnsw_file, tmp_path):
    p, params = hnsw_file
    raw = p.read_bytes()
    for n in (0, 50, HNSW_HEADER.size, HNSW_HEADER.size + 100, len(raw) - 1):
        (tmp_path / "t.bin").write_bytes(raw[:n])
        with pytest.raises(BankError):
            load_bank(tmp_path / "t.bin", params)
    (tmp_path / "t.bin").write_bytes(raw + b"\0")
    with pytest.raises(BankError, match="more bytes"):
        load_bank(tmp_path / "t.bin", params)
    assert check_hnsw_file(p, 16, n=300, M=4, ef_construction=20)["n"] == 300


def test_every_single_byte_flip_is_refused_or_safe(hnsw_file, tmp_path):
    # Flip each byte of a small index (every header field, count, link, vector and label) and
    # load + search whatever the check lets through, in a child process: a native crash there
    # fails this test with the offset it died at.
    x, q = gaussian_mixture(60, 4, seed=1, n_queries=20)
    b = build_bank(x, "hnsw", M=3, ef_construction=10, ef=10)
    p = tmp_path / "small.bin"
    b.save(p)
    np.save(tmp_path / "q.npy", q)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from dn2.runtime.bank import BankError, load_bank
        params = {b.params()!r}
        raw = open({str(p)!r}, "rb").read()
        q = np.load({str(tmp_path / "q.npy")!r})
        refused = passed = 0
        for off in range(len(raw)):
            b = bytearray(raw); b[off] ^= 0xFF
            open({str(tmp_path / "f.bin")!r}, "wb").write(bytes(b))
            print(off, flush=True, file=sys.stderr)
            try:
                bank = load_bank({str(tmp_path / "f.bin")!r}, params)
            except BankError:
                refused += 1
                continue
            d, i = bank.search(q, 2)
            assert ((i >= 0) & (i < 60)).all()
            passed += 1
        print(refused, passed)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else []
    assert r.returncode == 0, (
        f"child died (rc {r.returncode}) after offset {last}: {r.stderr[-500:]}"
    )
    refused, passed = map(int, r.stdout.split())
    assert refused + passed == len(p.read_bytes())
    # every header byte and every level-0 count byte is structural: those flips are refused
    assert refused > 96 + 60 * 2


def test_npy_header_checked_before_allocation(tmp_path):
    x = np.zeros((10, 8), np.float32)
    p = tmp_path / "bank.npy"
    np.save(p, x)
    check_npy_file(p, 10, 8)
    # a header declaring (1e9, 1280) must not make numpy allocate 5 TB
    raw = p.read_bytes().replace(b"(10, 8)", b"(1000000000, 1280)".ljust(7)[: len(b"(10, 8)")])
    hdr = np.lib.format.header_data_from_array_1_0(x)
    hdr["shape"] = (10**9, 1280)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    (tmp_path / "big.npy").write_bytes(buf.getvalue() + raw[128:])
    with pytest.raises(BankError, match="manifest says"):
        load_bank(tmp_path / "big.npy", {"kind": "exact", "n": 10, "dim": 8})
    with pytest.raises(BankError, match="the file has"):
        load_bank(tmp_path / "big.npy", {"kind": "exact"})
    np.savez(tmp_path / "z.npz", a=x)
    with pytest.raises(BankError, match="zip archive"):
        load_bank(tmp_path / "z.npz", {"kind": "exact", "n": 10, "dim": 8})
    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    with pytest.raises(BankError, match="float32"):
        load_bank(tmp_path / "f64.npy", {"kind": "exact", "n": 10, "dim": 8})
