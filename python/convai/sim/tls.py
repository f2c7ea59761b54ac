"""Certificates for the simulator's TLS mode (``wss://``), made with ``openssl`` at run time.

Nothing here is shipped to a PBX: it is test and benchmark tooling. One private CA signs the
server certificates; the client trusts it the way an admin would add a private CA (the
``SSL_CERT_FILE`` environment of the Asterisk process, docs/SECURITY.md). Besides the good
certificate there are the three a client must refuse: one for another host name, an expired
one, and a self-signed one.

    pki = make_test_pki(tmp_path)                    # ~0.1 s, EC P-256 keys
    sim = Simulator(scenario, ssl_context=server_context(pki.good))
    Asterisk(..., env={"SSL_CERT_FILE": str(pki.ca.cert)})

``python -m convai.sim.tls DIR`` writes the same files for use from a shell (bench/, demos).
OpenSSL 3.0 and newer (``openssl ca`` with explicit dates, so no faketime is needed).
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "Pki", "client_context", "issue", "make_ca", "make_test_pki"]

# Names a good certificate covers: what the simulator's URLs use (127.0.0.1) and localhost.
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
WRONG_HOST = "wrong-host.convai.invalid"  # a name no URL of ours uses (RFC 6761 .invalid)
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

_CONFIG = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ leaf_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $ENV::CONVAI_SAN
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none
[ any_name ]
commonName = supplied
"""


@dataclass(frozen=True)
class CertPair:
    cert: Path  # PEM certificate
    key: Path  # PEM private key (mode 0600)


@dataclass(frozen=True)
class Pki:
    ca: CertPair  # the private CA the client is told to trust
    good: CertPair  # signed by ca, for DEFAULT_HOSTS, valid now
    wrong_host: CertPair  # signed by ca, valid now, but only for WRONG_HOST
    expired: CertPair  # signed by ca, for DEFAULT_HOSTS, expired in 2020
    self_signed: CertPair  # for DEFAULT_HOSTS, valid now, signed by nobody the client trusts


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    r = subprocess.run(
        [exe, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def _san(hosts: tuple[str, ...]) -> str:
    return ",".join(("IP:" if h[0].isdigit() or ":" in h else "DNS:") + h for h in hosts)


def _env(hosts: tuple[str, ...]) -> dict[str, str]:
    return {**os.environ, "CONVAI_SAN": _san(hosts)}


def make_ca(directory: Path, name: str = "convai test CA") -> CertPair:
    """A new CA in ``directory`` (created), valid for 30 days."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "issued").mkdir(exist_ok=True)
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    conf = directory / "openssl.cnf"
    conf.write_text(_CONFIG.replace("{dir}", str(directory)))
    pair = CertPair(directory / "ca.pem", directory / "ca.key")
    _openssl(
        "req", "-x509", "-config", str(conf), "-extensions", "ca_ext", *_EC,
        "-keyout", str(pair.key), "-out", str(pair.cert), "-days", "30", "-subj", f"/CN={name}",
        env=_env(DEFAULT_HOSTS),
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def issue(
    ca: CertPair,
    name: str,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    start: str | None = None,
    end: str | None = None,
) -> CertPair:
    """A server certificate signed by ``ca`` (in the CA's directory), valid from ``start`` to
    ``end`` (``YYYYMMDDHHMMSSZ``; default: from an hour ago for 30 days)."""
    directory = ca.cert.parent
    conf = directory / "openssl.cnf"
    pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    env = _env(hosts)
    _openssl(
        "req", "-new", "-config", str(conf), *_EC, "-keyout", str(pair.key), "-out", str(csr),
        "-subj", f"/CN={hosts[0]}", env=env,
    )  # fmt: skip
    pair.key.chmod(0o600)
    dates = ["-startdate", start] if start else []
    dates += ["-enddate", end] if end else ["-days", "30"]
    if not start:
        hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        dates += ["-startdate", hour_ago.strftime("%Y%m%d%H%M%SZ")]
    _openssl(
        "ca", "-batch", "-config", str(conf), "-extensions", "leaf_ext", "-notext",
        "-in", str(csr), "-out", str(pair.cert), *dates, env=env,
    )  # fmt: skip
    return pair


def self_signed(directory: Path, name: str, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> CertPair:
    """A server certificate that signs itself (for ``hosts``, valid now)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "openssl.cnf"
    if not conf.exists():
        conf.write_text(_CONFIG.replace("{dir}", str(directory)))
    pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-config", str(conf), "-extensions", "leaf_ext", *_EC,
        "-keyout", str(pair.key), "-out", str(pair.cert), "-days", "30",
        "-subj", f"/CN={hosts[0]}", env=_env(hosts),
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def make_test_pki(directory: Path) -> Pki:
    """The CA and the four server certificates of :class:`Pki`, under ``directory``."""
    ca = make_ca(directory / "ca")
    return Pki(
        ca=ca,
        good=issue(ca, "good"),
        wrong_host=issue(ca, "wrong-host", hosts=(WRONG_HOST,)),
        expired=issue(ca, "expired", start="20200101000000Z", end="20200201000000Z"),
        self_signed=self_signed(directory / "self", "self-signed"),
    )


def server_context(pair: CertPair) -> ssl.SSLContext:
    """What the simulator serves with: ``pair`` as its certificate chain."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def client_context(ca: CertPair) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca`` only (bench's own clients)."""
    return ssl.create_default_context(cafile=str(ca.cert))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m convai.sim.tls DIR", file=sys.stderr)
        return 2
    pki = make_test_pki(Path(argv[0]).resolve())
    for label, pair in vars(pki).items():
        print(f"{label:12} {pair.cert}  (key {pair.key})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
