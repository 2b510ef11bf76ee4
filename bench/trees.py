#!/usr/bin/env python3
"""The trees an incremental added to a local restic repository (format 2), by path, and
for two repositories (say snapring's and restic's of the same source, kept by
`bench/repo.py --keep DIR`) which node fields differ. How issue 14's incremental bytes
were explained (docs/performance.md).

    python3 bench/trees.py DIR/snapring-2 DIR/restic-2 [--password PW]

"New" trees are those of the repository's latest snapshot that its first does not have.
Reads the repository only; checks each blob's SHA-256 but not its MAC (an analysis
tool, not a verifier: `snapring verify` and `restic check` are those). Needs Python's
`cryptography` and libzstd (`libzstd.so.1`).
"""

import argparse
import base64
import collections
import ctypes
import hashlib
import json
import os
import struct
import subprocess

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

ZSTD = ctypes.CDLL("libzstd.so.1")
ZSTD.ZSTD_decompress.restype = ctypes.c_size_t


def unzstd(b, n=None):
    """Decompresses a zstd frame of `n` bytes (unknown: through the zstd command)."""
    if n is None:
        return subprocess.run(["zstd", "-dc"], input=b, capture_output=True, check=True).stdout
    out = ctypes.create_string_buffer(n)
    k = ZSTD.ZSTD_decompress(out, n, b, len(b))
    if k != n:
        raise SystemExit(f"zstd: {k} bytes, expected {n}")
    return out.raw[:k]


def decrypt(key, sealed):
    """IV || AES-256-CTR ciphertext || MAC -> plaintext (MAC not checked)."""
    iv, ct = sealed[:16], sealed[16:-16]
    d = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
    return d.update(ct) + d.finalize()


def master_key(repo, password):
    kd = os.path.join(repo, "keys")
    k = json.load(open(os.path.join(kd, sorted(os.listdir(kd))[0])))
    dk = Scrypt(salt=base64.b64decode(k["salt"]), length=64, n=k["N"], r=k["r"], p=k["p"]).derive(password.encode())
    return base64.b64decode(json.loads(decrypt(dk[:32], base64.b64decode(k["data"])))["encrypt"])


def files(repo, sub):
    for dp, _, fs in os.walk(os.path.join(repo, sub)):
        for f in fs:
            yield os.path.join(dp, f)


def unpacked(key, path):
    p = decrypt(key, open(path, "rb").read())
    return unzstd(p[1:]) if p[:1] == b"\x02" else p


def tree_blobs(repo, key):
    """{id: {stored, plain, tree}} of every tree blob in the packs."""
    out = {}
    for f in files(repo, "data"):
        raw = open(f, "rb").read()
        hl = struct.unpack("<I", raw[-4:])[0]
        hdr = decrypt(key, raw[-4 - hl:-4])
        off = i = 0
        while i < len(hdr):
            kind, ln = hdr[i], struct.unpack("<I", hdr[i + 1:i + 5])[0]
            ul = struct.unpack("<I", hdr[i + 5:i + 9])[0] if kind in (2, 3) else None
            i += 9 if kind in (2, 3) else 5
            bid = hdr[i:i + 32].hex()
            i += 32
            if kind in (1, 3):
                plain = decrypt(key, raw[off:off + ln])
                if kind == 3:
                    plain = unzstd(plain, ul)
                if hashlib.sha256(plain).hexdigest() != bid:
                    raise SystemExit(f"{f}: tree blob {bid} does not match its id")
                out[bid] = dict(stored=ln, plain=len(plain), tree=json.loads(plain))
            off += ln
    return out


def load(repo, password):
    """(tree blobs, {path: id} of the trees new in the latest snapshot)."""
    key = master_key(repo, password)
    blobs = tree_blobs(repo, key)
    snaps = sorted((json.loads(unpacked(key, f)) for f in files(repo, "snapshots")), key=lambda s: s["time"])

    def walk(root):
        out, todo = {}, [(root, "")]
        while todo:
            tid, path = todo.pop()
            out[path] = tid
            todo += [(n["subtree"], f"{path}/{n['name']}") for n in blobs[tid]["tree"]["nodes"] if n.get("subtree")]
        return out

    old = set(walk(snaps[0]["tree"]).values())
    return blobs, {p: t for p, t in walk(snaps[-1]["tree"]).items() if t not in old}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repos", nargs="+", metavar="REPO")
    ap.add_argument("--password", default="bench password", help="(bench/repo.py's)")
    a = ap.parse_args()
    loaded = [load(r, a.password) for r in a.repos]
    for r, (blobs, new) in zip(a.repos, loaded):
        ids = set(new.values())
        print(f"{r}: {len(ids)} new trees, {sum(blobs[i]['plain'] for i in ids)} bytes of JSON, "
              f"{sum(blobs[i]['stored'] for i in ids)} stored; all {len(blobs)} trees "
              f"{sum(b['stored'] for b in blobs.values())} stored")
    if len(loaded) != 2:
        return
    (ba, na), (bb, nb) = loaded
    common = sorted(set(na) & set(nb))
    print(f"new in both: {len(common)}; only in the first {len(set(na) - set(nb))}, "
          f"only in the second {len(set(nb) - set(na))}")
    count, example = collections.Counter(), {}
    for p in common:
        x = {n["name"]: n for n in ba[na[p]]["tree"]["nodes"]}
        y = {n["name"]: n for n in bb[nb[p]]["tree"]["nodes"]}
        for name in set(x) | set(y):
            if name not in x or name not in y:
                count["(node in one only)"] += 1
                continue
            for k in (set(x[name]) | set(y[name])) - {"subtree"}:
                if x[name].get(k) != y[name].get(k):
                    count[k] += 1
                    example.setdefault(k, (p, name, x[name].get(k), y[name].get(k)))
    for k, c in count.most_common():
        print(f"  {k}: differs in {c} nodes, e.g. {str(example.get(k))[:300]}")


if __name__ == "__main__":
    main()
