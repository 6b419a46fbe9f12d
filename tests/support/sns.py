"""A local stand-in for Amazon SNS: an HTTPS server on port 0 with a certificate for
``sns.us-east-1.amazonaws.com`` from a throwaway CA, serving an SNS signing certificate and
answering subscription confirmations; messages signed the way SNS signs them (SignatureVersion
1 or 2); and the fetch that reaches it through rtserver's outbound guard (that host resolved to
127.0.0.1, the CA trusted, port 443 carried to the server's port)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug import Request, Response

from rtserver.ingest import guarded_fetch
from rtserver.mail import Fetch
from tests.support.receiver import Receiver
from tests.support.relays import fixture

SNS_HOST = "sns.us-east-1.amazonaws.com"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
CERT_URL = f"https://{SNS_HOST}{CERT_PATH}"
CONFIRMED = b"""<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
<ConfirmSubscriptionResult><SubscriptionArn>arn:aws:sns:us-east-1:123456789012:ses-feedback:1
</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"""

SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
"""The fields SNS signs, in order, as its developer guide lists them."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass
class LocalSns:
    """The keys and certificates of the stand-in, and the server once it runs."""

    folder: Path
    signing_key: rsa.RSAPrivateKey
    signing_pem: bytes
    server_tls: ssl.SSLContext
    client_tls: ssl.SSLContext
    receiver: Receiver | None = None

    @classmethod
    def create(cls, folder: Path) -> LocalSns:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            _builder("sns test CA", "sns test CA", ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        tls_key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            _builder(SNS_HOST, "sns test CA", tls_key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNS_HOST)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signing = _builder("sns.amazonaws.com", "sns test CA", signing_key.public_key()).sign(
            ca_key, hashes.SHA256()
        )
        pem = serialization.Encoding.PEM
        (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
        (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
        (folder / "leaf.key").write_bytes(
            tls_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
        client_tls = ssl.create_default_context(cafile=folder / "ca.pem")
        return cls(folder, signing_key, signing.public_bytes(pem), server_tls, client_tls)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        """The HTTPS server: the signing certificate at :data:`CERT_PATH`, and a
        confirmation's answer at ``/``."""
        async with Receiver.running(ssl_context=self.server_tls) as receiver:
            receiver.expect_request(CERT_PATH).respond_with_data(self.signing_pem)
            receiver.expect_request("/").respond_with_handler(self._confirm)
            self.receiver = receiver
            try:
                yield receiver
            finally:
                self.receiver = None

    @staticmethod
    def _confirm(request: Request) -> Response:
        if request.args.get("Action") != "ConfirmSubscription":
            return Response("unknown action", status=400)
        return Response(CONFIRMED, content_type="text/xml")

    def fetch(self) -> Fetch:
        """rtserver's guarded fetch, reaching the running server for :data:`SNS_HOST`."""
        assert self.receiver is not None
        port = self.receiver.port

        async def resolve(host: str, _port: int) -> list[str]:
            if host != SNS_HOST:
                raise OSError(f"{host} does not resolve here")
            return ["127.0.0.1"]

        inner = httpx.AsyncHTTPTransport(verify=self.client_tls)
        return guarded_fetch(allow_private=True, resolve=resolve, transport=ToPort(inner, port))

    def sign(self, envelope: dict[str, Any], version: str = "1") -> dict[str, Any]:
        """``envelope`` with ``SignatureVersion``, ``SigningCertURL`` (unless given) and a
        ``Signature`` over its signed fields."""
        envelope = {"SigningCertURL": CERT_URL, **envelope, "SignatureVersion": version}
        fields = SIGNED.get(envelope["Type"], SIGNED["SubscriptionConfirmation"])
        text = "".join(
            f"{name}\n{envelope[name]}\n" for name in fields if envelope.get(name) is not None
        )
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.signing_key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {**envelope, "Signature": base64.b64encode(signature).decode()}

    def notification(
        self,
        message: dict[str, Any],
        *,
        at: float,
        message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        topic: str = TOPIC,
        version: str = "1",
        **extra: Any,
    ) -> dict[str, Any]:
        """A signed Notification (the SNS guide's shape) carrying ``message`` (SES's JSON)."""
        envelope = fixture("ses/sns-notification.json")
        envelope.pop("Signature")
        envelope |= {
            "MessageId": message_id,
            "TopicArn": topic,
            "Subject": None,
            "Message": orjson.dumps(message).decode(),
            "Timestamp": stamp(at),
            "UnsubscribeURL": f"https://{SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={topic}:1",
            "SigningCertURL": CERT_URL,
            **extra,
        }
        return self.sign(envelope, version)

    def confirmation(
        self, *, at: float, topic: str = TOPIC, kind: str = "SubscriptionConfirmation"
    ) -> dict[str, Any]:
        """A signed SubscriptionConfirmation (or UnsubscribeConfirmation) for ``topic``."""
        envelope = fixture("ses/sns-subscription-confirmation.json")
        envelope.pop("Signature")
        token = envelope["Token"]
        envelope |= {
            "Type": kind,
            "MessageId": f"{kind[:5].lower()}-165545c9-2a5c-472c-8df2",
            "TopicArn": topic,
            "Timestamp": stamp(at),
            "SigningCertURL": CERT_URL,
            "SubscribeURL": (
                f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}"
            ),
        }
        return self.sign(envelope)


class ToPort(httpx.AsyncBaseTransport):
    """Sends every request to ``port`` (the local server) instead of the URL's: the network
    that routes SNS's port 443 to the test's server."""

    def __init__(self, inner: httpx.AsyncHTTPTransport, port: int) -> None:
        self._inner, self._port = inner, port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def stamp(at: float) -> str:
    """An SNS Timestamp (ISO 8601, milliseconds, Z)."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
