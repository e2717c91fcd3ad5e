"""Keys and certificates: SSH CAs and certificates (Ed25519), X.509 for mutual TLS, secret files.

SSH certificates are encoded here (PROTOCOL.certkeys) rather than with asyncssh because
asyncssh can only write the standard extensions, and user certificates must carry the
roles, traits and cluster as custom extensions that ``ssh-keygen -L`` and asyncssh read.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib
import ipaddress
import json
import os
import secrets
import struct
from dataclasses import dataclass

from .errors import BadParameter
from .wire import EXT_CLUSTER, EXT_CONNECTOR, EXT_MEMBER_KIND, EXT_ROLES, EXT_TRAITS, MEMBER_KINDS


class _LazyModule:
    """A module imported on first use, so that importing pki stays cheap.

    `gate ssh` and `gate status` only read certificate files; loading
    ``cryptography.x509`` and friends up front cost them tens of milliseconds.
    On first attribute access the real module replaces this stand-in.
    """

    def __init__(self, alias: str, name: str):
        self._alias = alias
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        globals()[self._alias] = module
        return getattr(module, attr)


x509 = _LazyModule("x509", "cryptography.x509")
hashes = _LazyModule("hashes", "cryptography.hazmat.primitives.hashes")
serialization = _LazyModule("serialization", "cryptography.hazmat.primitives.serialization")
ec = _LazyModule("ec", "cryptography.hazmat.primitives.asymmetric.ec")
ed25519 = _LazyModule("ed25519", "cryptography.hazmat.primitives.asymmetric.ed25519")
_exceptions = _LazyModule("_exceptions", "cryptography.exceptions")

# ------------------------------------------------------------------ SSH keys

KEY_TYPE = "ssh-ed25519"
CERT_KEY_TYPE = "ssh-ed25519-cert-v01@openssh.com"
_CERT_TYPES = {"user": 1, "host": 2}


@dataclass
class SSHKeyPair:
    private_openssh: str
    public_line: str


def new_ssh_key(comment: str = "") -> SSHKeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return SSHKeyPair(private, f"{public} {comment}".strip())


def ssh_public_from_private(private_openssh: str) -> str:
    """The ``ssh-ed25519 AAAA...`` line of a private key (without comment)."""
    return _public_line(_load_ssh_private(private_openssh).public_key())


def ssh_fingerprint(public_line: str) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it; for a certificate, that of its key."""
    key_type, blob = _split_line(public_line)
    if key_type == CERT_KEY_TYPE:
        try:
            blob = _plain_blob(_ed25519_raw_from_cert(blob))
        except ValueError:
            raise BadParameter("the SSH certificate is malformed.") from None
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


#: A CA public key line that crosses the network (trust handshake) is at most this long.
MAX_CA_LINE = 1024


def ca_public_key(line) -> str:
    """The canonical ``ssh-ed25519 BASE64`` of a certificate authority's public key line.

    BadParameter (a sentence without a final fix) unless LINE is exactly one Ed25519
    public key: one line, bounded, the key data well formed and 32 bytes long. Every
    SSH CA of a Gatehouse cluster is Ed25519, and comments never take part in matching.
    """
    if not isinstance(line, str):
        raise BadParameter(f"it is {type(line).__name__}, not a public key line")
    text = line.strip()
    if len(text) > MAX_CA_LINE:
        raise BadParameter(f"it is {len(text)} characters long, more than {MAX_CA_LINE}")
    if not text.isprintable():
        raise BadParameter("it is not one line of printable text (one key per certificate authority)")
    try:
        raw = _load_ssh_public_raw(text)
    except ValueError as exc:  # BadParameter is a ValueError too; truncation in the key data is one
        reason = exc.message.rstrip(".") if isinstance(exc, BadParameter) else "its key data is truncated"
        raise BadParameter(reason) from None
    if len(raw) != 32:
        raise BadParameter(f"its {KEY_TYPE} key is {len(raw)} bytes long, not 32")
    return _public_line(ed25519.Ed25519PublicKey.from_public_bytes(raw))


def _split_line(line: str) -> tuple[str, bytes]:
    parts = (line or "").split()
    if len(parts) < 2:
        raise BadParameter("the SSH key line is not in the form 'TYPE BASE64 [COMMENT]'.")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        inner_type = _Reader(blob).string().decode()
    except (ValueError, UnicodeDecodeError):
        raise BadParameter("the SSH key line does not contain valid base64 key data.") from None
    if inner_type != parts[0]:
        raise BadParameter(f"the SSH key line says {parts[0]!r} but its data is {inner_type!r}.")
    return parts[0], blob


def _load_ssh_private(private_openssh: str) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    except (ValueError, TypeError):
        raise BadParameter("the SSH private key is not an unencrypted OpenSSH private key.") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadParameter("the SSH private key must be Ed25519.")
    return key


def _load_ssh_public_raw(public_line: str) -> bytes:
    """Raw 32-byte Ed25519 key of a ``ssh-ed25519 AAAA...`` line."""
    key_type, blob = _split_line(public_line)
    if key_type != KEY_TYPE:
        raise BadParameter(f"only {KEY_TYPE} keys can be certified, not {key_type}.")
    reader = _Reader(blob)
    reader.string()
    raw = reader.string()
    reader.end()
    return raw


def _public_line(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _plain_blob(raw: bytes) -> bytes:
    return _string(KEY_TYPE.encode()) + _string(raw)


# ------------------------------------------------------------------ SSH wire format

def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    """Reads SSH wire types; any truncation is a ValueError."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def string(self) -> bytes:
        return self._take(struct.unpack(">I", self._take(4))[0])

    def u32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self._take(8))[0]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("trailing data")


def _encode_options(options: dict[str, str]) -> bytes:
    # Sorted by name; a flag has empty data, anything else is a string inside the data string.
    out = b""
    for name in sorted(options, key=lambda n: n.encode()):
        value = options[name]
        if not name or not isinstance(value, str):
            raise BadParameter(f"certificate option {name!r} needs a non-empty name and a string value.")
        out += _string(name.encode()) + _string(_string(value.encode()) if value else b"")
    return out


def _decode_options(data: bytes) -> dict[str, str]:
    reader, out = _Reader(data), {}
    while reader.pos < len(data):
        name = reader.string().decode()
        value = reader.string()
        if value:
            inner = _Reader(value)
            value = inner.string()
            inner.end()
        out[name] = value.decode()
    return out


# ------------------------------------------------------------------ SSH certificates

def user_cert_extensions(roles, traits, cluster, permit_pty=True, permit_port_forwarding=True,
                         permit_agent_forwarding=True, permit_x11_forwarding=False,
                         permit_user_rc=False, connector: str = "") -> dict[str, str]:
    flags = {"permit-pty": permit_pty, "permit-port-forwarding": permit_port_forwarding,
             "permit-agent-forwarding": permit_agent_forwarding,
             "permit-X11-forwarding": permit_x11_forwarding, "permit-user-rc": permit_user_rc}
    ext = {name: "" for name, on in flags.items() if on}
    ext[EXT_ROLES] = json.dumps(list(roles), separators=(",", ":"))
    ext[EXT_TRAITS] = json.dumps(dict(traits), separators=(",", ":"), sort_keys=True)
    ext[EXT_CLUSTER] = json.dumps(cluster)
    if connector:
        ext[EXT_CONNECTOR] = json.dumps(connector)
    return ext


def sign_ssh_cert(ca_private_openssh: str, public_line: str, *, cert_type: str, key_id: str,
                  principals: list[str], valid_after: int, valid_before: int,
                  extensions: dict[str, str] | None = None, critical_options: dict[str, str] | None = None,
                  serial: int | None = None) -> str:
    """Sign ``public_line`` with the CA; returns ``ssh-ed25519-cert-v01@openssh.com AAAA... key_id``."""
    if cert_type not in _CERT_TYPES:
        raise BadParameter(f"certificate type must be 'user' or 'host', not {cert_type!r}.")
    if not principals or not all(principals):
        # OpenSSH and asyncssh read an empty principal list as "valid for any name".
        raise BadParameter("an SSH certificate needs at least one non-empty principal.")
    if not 0 <= valid_after < valid_before < 2 ** 64:
        raise BadParameter("the certificate validity must satisfy 0 <= valid_after < valid_before.")
    serial = secrets.randbits(64) if serial is None else serial
    if not 0 <= serial < 2 ** 64:
        raise BadParameter("the certificate serial must fit in an unsigned 64-bit integer.")
    ca = _load_ssh_private(ca_private_openssh)
    body = b"".join((
        _string(CERT_KEY_TYPE.encode()), _string(secrets.token_bytes(32)),
        _string(_load_ssh_public_raw(public_line)),
        struct.pack(">QI", serial, _CERT_TYPES[cert_type]), _string(key_id.encode()),
        _string(b"".join(_string(p.encode()) for p in principals)),
        struct.pack(">QQ", valid_after, valid_before),
        _string(_encode_options(critical_options or {})), _string(_encode_options(extensions or {})),
        _string(b""),  # reserved
        _string(_plain_blob(ca.public_key().public_bytes_raw())),
    ))
    signature = _string(KEY_TYPE.encode()) + _string(ca.sign(body))
    blob = body + _string(signature)
    return f"{CERT_KEY_TYPE} {base64.b64encode(blob).decode()} {key_id}".rstrip()


def sign_blob(private_openssh: str, domain: bytes, data: bytes) -> str:
    """Base64 of the Ed25519 signature over DOMAIN + NUL + DATA with an OpenSSH private key.

    DOMAIN names what is signed (``gatehouse-audit-anchor-v1``): a signature made for one
    purpose never verifies for another, and none of them is an SSH certificate or session
    signature, which sign different structures with the same key."""
    key = _load_ssh_private(private_openssh)
    return base64.b64encode(key.sign(domain + b"\0" + data)).decode()


def verify_blob(public_line: str, domain: bytes, data: bytes, signature) -> bool:
    """Whether SIGNATURE (base64, from sign_blob) is PUBLIC_LINE's Ed25519 key's over DOMAIN and DATA."""
    if not isinstance(signature, str) or len(signature) > 200:
        return False
    try:
        raw = _load_ssh_public_raw(public_line)
        sig = base64.b64decode(signature, validate=True)
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(sig, domain + b"\0" + data)
        return True
    except (ValueError, _exceptions.InvalidSignature):
        return False


@dataclass
class SSHCertInfo:
    cert_type: str
    key_id: str
    principals: list[str]
    valid_after: int
    valid_before: int
    extensions: dict[str, str]
    critical_options: dict[str, str]
    serial: int
    public_line: str
    signing_ca_line: str

    def _json(self, name: str, default):
        if name not in self.extensions:
            return default
        try:
            return json.loads(self.extensions[name])
        except ValueError:
            raise BadParameter(f"the certificate extension {name} is not valid JSON.") from None

    @property
    def roles(self) -> list[str]:
        return self._json(EXT_ROLES, [])

    @property
    def traits(self) -> dict[str, list[str]]:
        return self._json(EXT_TRAITS, {})

    @property
    def cluster(self) -> str | None:
        return self._json(EXT_CLUSTER, None)

    @property
    def connector(self) -> str:
        """The single sign-on connector that logged the user in ("oidc/NAME"); "" after a password login."""
        return self._json(EXT_CONNECTOR, "")

    @property
    def member_kind(self) -> str:
        """``node`` or ``proxy`` for a host certificate auth issued to a cluster member, else "".

        The key id (``KIND:NAME``) and, when present, the kind extension must agree; a
        certificate that says neither, or both differently, is no member's.
        """
        kind, sep, name = self.key_id.partition(":")
        if self.cert_type != "host" or not sep or kind not in MEMBER_KINDS or not name:
            return ""
        if EXT_MEMBER_KIND in self.extensions:
            try:
                if self._json(EXT_MEMBER_KIND, None) != kind:
                    return ""
            except BadParameter:
                return ""
        return kind

    @property
    def member_name(self) -> str:
        """The member's name in a member host certificate's key id (``proxy:NAME``), else ""."""
        return self.key_id.partition(":")[2] if self.member_kind else ""


def parse_ssh_cert(cert_line: str) -> SSHCertInfo:
    """Decode an Ed25519 OpenSSH certificate and verify its CA signature."""
    key_type, blob = _split_line(cert_line)
    if key_type != CERT_KEY_TYPE:
        raise BadParameter(f"expected an {CERT_KEY_TYPE} certificate, got {key_type}.")
    try:
        info, signed, ca_raw, signature = _decode_cert(blob)
    except (ValueError, UnicodeDecodeError):
        raise BadParameter("the SSH certificate is malformed.") from None
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(ca_raw).verify(signature, signed)
    except (_exceptions.InvalidSignature, ValueError):
        raise BadParameter("the SSH certificate signature does not match its signing CA.") from None
    return info


def _decode_cert(blob: bytes) -> tuple[SSHCertInfo, bytes, bytes, bytes]:
    r = _Reader(blob)
    r.string(), r.string()  # type (checked by the caller), nonce
    key_raw, serial, type_code, key_id = r.string(), r.u64(), r.u32(), r.string().decode()
    names = _Reader(r.string())
    principals = []
    while names.pos < len(names.data):
        principals.append(names.string().decode())
    valid_after, valid_before = r.u64(), r.u64()
    critical, extensions = _decode_options(r.string()), _decode_options(r.string())
    r.string()  # reserved
    ca = _Reader(r.string())
    if ca.string() != KEY_TYPE.encode():
        raise ValueError("only Ed25519 signing CAs are supported")
    ca_raw = ca.string()
    signed = blob[:r.pos]
    sig = _Reader(r.string())
    r.end()
    if sig.string() != KEY_TYPE.encode():
        raise ValueError("unexpected signature algorithm")
    signature = sig.string()
    cert_type = {v: k for k, v in _CERT_TYPES.items()}.get(type_code)
    if cert_type is None or len(key_raw) != 32 or len(ca_raw) != 32:
        raise ValueError("bad certificate type or key size")
    info = SSHCertInfo(cert_type, key_id, principals, valid_after, valid_before, extensions, critical,
                       serial, _b64_line(_plain_blob(key_raw)), _b64_line(_plain_blob(ca_raw)))
    return info, signed, ca_raw, signature


def _ed25519_raw_from_cert(blob: bytes) -> bytes:
    r = _Reader(blob)
    r.string(), r.string()
    return r.string()


def _b64_line(plain_blob: bytes) -> str:
    return f"{KEY_TYPE} {base64.b64encode(plain_blob).decode()}"


def write_secret(path: str, data: str | bytes) -> None:
    """Atomically write a file only the owner can read (0600)."""
    _write_atomic(path, data, 0o600)


def write_public(path: str, data: str | bytes) -> None:
    _write_atomic(path, data, 0o644)


def _make_private_dirs(path: str) -> None:
    # os.makedirs applies `mode` to the last directory only; every one we create is 0700.
    if os.path.isdir(path):
        return
    _make_private_dirs(os.path.dirname(path))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def _write_atomic(path: str, data: str | bytes, mode: int) -> None:
    # A temp file in the same directory + rename: readers never see a half-written key,
    # and O_EXCL with mode 0600 means the secret is never readable by others, even briefly.
    parent = os.path.dirname(os.path.abspath(path))
    _make_private_dirs(parent)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # explicit, so the umask cannot change it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------ X.509

def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load_cert(cert_pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise BadParameter("the X.509 certificate is not valid PEM.") from None


def _load_key(key_pem: str):
    try:
        return serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise BadParameter("the X.509 private key is not an unencrypted PEM key.") from None


def new_tls_key() -> tuple[str, str]:
    """ECDSA P-256 key: (PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _private_pem(key), _public_pem(key)


def tls_public_from_private(key_pem: str) -> str:
    """The SubjectPublicKeyInfo PEM of a private key (what a renewal request sends)."""
    return _public_pem(_load_key(key_pem))


def _private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _name(common_name: str, organization: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, organization)]
    if unit:
        attrs.append(x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def new_tls_ca(cluster_name: str, ttl_days: int = 3650) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cluster_name, cluster_name)
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=60))
            .not_valid_after(now + datetime.timedelta(days=ttl_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _private_pem(key), _pem(cert)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _san(dns_names, ip_addresses) -> x509.SubjectAlternativeName | None:
    try:
        names = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    except ValueError as err:
        raise BadParameter(f"invalid certificate address: {err}.") from None
    return x509.SubjectAlternativeName(names) if names else None


def _eku(server: bool, client: bool) -> x509.ExtendedKeyUsage:
    usages = ([x509.ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([x509.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if not usages:
        raise BadParameter("a TLS certificate must be for server use, client use or both.")
    return x509.ExtendedKeyUsage(usages)


def issue_tls_cert(ca_key_pem: str, ca_cert_pem: str, public_pem: str, *, common_name: str,
                   organization: str, unit: str, dns_names=(), ip_addresses=(), ttl_seconds: int,
                   server: bool, client: bool) -> str:
    ca_key, ca_cert = _load_key(ca_key_pem), _load_cert(ca_cert_pem)
    try:
        public = serialization.load_pem_public_key(public_pem.encode())
    except ValueError:
        raise BadParameter("the public key is not a valid PEM public key.") from None
    now = _now()
    # Never outlive the CA: the certificate would stop verifying then anyway.
    not_after = min(now + datetime.timedelta(seconds=ttl_seconds), ca_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name, organization, unit))
               .issuer_name(ca_cert.subject).public_key(public)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(seconds=60))  # tolerate clock skew
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(cert_sign=False), critical=True)
               .add_extension(_eku(server, client), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
               .add_extension(_aki(ca_cert), critical=False))
    san = _san(dns_names, ip_addresses)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return _pem(builder.sign(ca_key, hashes.SHA256()))


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())


def tls_identity(cert_pem: str) -> dict:
    """Who a client certificate names: {name: CN, cluster: O, kind: OU, expires: unix time}."""
    cert = _load_cert(cert_pem)

    def attr(oid):
        values = cert.subject.get_attributes_for_oid(oid)
        return values[0].value if values else None

    return {"name": attr(x509.NameOID.COMMON_NAME), "cluster": attr(x509.NameOID.ORGANIZATION_NAME),
            "kind": attr(x509.NameOID.ORGANIZATIONAL_UNIT_NAME),
            "expires": int(cert.not_valid_after_utc.timestamp())}


def tls_key_fingerprint(pem_or_der: str | bytes) -> str:
    """``sha256:<hex>`` of the SubjectPublicKeyInfo of a certificate (PEM or DER) or PEM public key.

    A member keeps its key pair when its certificates are renewed, so this names the
    member's identity across renewals (and is what a revocation locks).
    """
    data = pem_or_der.encode() if isinstance(pem_or_der, str) else pem_or_der
    try:
        if b"-----BEGIN PUBLIC KEY-----" in data:
            public = serialization.load_pem_public_key(data)
        elif data.lstrip().startswith(b"-----"):
            public = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = x509.load_der_x509_certificate(data).public_key()
    except ValueError:
        raise BadParameter("the certificate or public key is not valid PEM or DER.") from None
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def tls_fingerprint(cert_pem: str) -> str:
    """``sha256:<hex>`` of the DER certificate (what ``openssl x509 -fingerprint -sha256`` hashes)."""
    return "sha256:" + _load_cert(cert_pem).fingerprint(hashes.SHA256()).hex()


def self_signed_web_cert(hostnames, ips, ttl_days: int = 365) -> tuple[str, str]:
    """Stand-in server certificate for the proxy web endpoint when none is configured."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostnames, ips = list(hostnames) or ["localhost"], list(ips)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostnames[0])])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=60))
            .not_valid_after(now + datetime.timedelta(days=ttl_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(_san(hostnames, ips), critical=False)
            .sign(key, hashes.SHA256()))
    return _private_pem(key), _pem(cert)
