"""Security: tenant isolation on every RPC, unguessable session ids, API keys compared in constant
time, every limit enforced, loopback by default, and TLS (and mutual TLS) through flags."""
from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import socket
import subprocess
from collections import Counter

import grpc
import pytest

from agentkv_proto.agentkv.v1 import session_pb2 as pb
from agentkv_proto.agentkv.v1 import session_service_pb2 as api
from agentkv_proto.agentkv.v1 import session_service_pb2_grpc as api_grpc
from grpc_server_fixture import (Client, generate_request, key_file, running_server,
                                 server_config, with_limits)
from runtime import auth as auth_mod
from runtime import cli_serve
from runtime.auth import AuthError, Authenticator
from runtime.server_config import ServerConfig
from runtime.server_tls import TLSConfigError, server_credentials
from sessions import ids

KEYS = {"key-acme": "acme", "key-globex": "globex", "key-initech": "initech"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("security")
    with running_server(server_config(d / "data", api_key_file=key_file(d, KEYS))) as st:
        yield st


def rpcs(sid: str):
    """(name, call(client)) for every RPC of the service that names a session."""
    return [
        ("GetSession", lambda c: c.GetSession(api.GetSessionRequest(session_id=sid))),
        ("Generate/messages", lambda c: list(c.Generate(generate_request(sid, "hi",
                                                                         max_tokens=2)))),
        ("Generate/tokens", lambda c: list(c.Generate(generate_request(sid, token_ids=[5, 6],
                                                                       max_tokens=2)))),
        ("Pause", lambda c: c.Pause(api.PauseRequest(session_id=sid, tool_name="t"))),
        ("Resume", lambda c: c.Resume(api.ResumeRequest(session_id=sid))),
        ("Cancel", lambda c: c.Cancel(api.CancelRequest(session_id=sid))),
        ("CloseSession", lambda c: c.CloseSession(api.CloseSessionRequest(session_id=sid))),
    ]


# -- tenant isolation --------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["waiting", "paused", "active"])
def test_other_tenants_get_not_found_on_every_rpc_in_every_state(server, state):
    acme, globex = Client(server.target, "key-acme"), Client(server.target, "key-globex")
    s = acme.create(system_prompt="acme's secret")
    acme.generate(s.session_id, "plans", max_tokens=2)
    running = None
    if state == "paused":
        acme.Pause(api.PauseRequest(session_id=s.session_id, tool_name="build"))
    elif state == "active":
        running = acme.Generate(generate_request(s.session_id, "long", max_tokens=400,
                                                 ignore_eos=True))
        assert next(running).HasField("delta")
    before = acme.get(s.session_id)
    for name, call in rpcs(s.session_id):
        with pytest.raises(grpc.RpcError) as e:
            call(globex)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, (name, e.value.details())
        assert "acme" not in e.value.details() and "secret" not in e.value.details()
    listed = globex.ListSessions(api.ListSessionsRequest(page_size=500)).sessions
    assert s.session_id not in {x.session_id for x in listed}
    for st in range(1, 6):                             # no state filter leaks it either
        listed = globex.ListSessions(api.ListSessionsRequest(page_size=500, state=st)).sessions
        assert s.session_id not in {x.session_id for x in listed}
    if running is not None:
        acme.Cancel(api.CancelRequest(session_id=s.session_id))
        assert list(running)[-1].result.finish_reason == pb.FINISH_REASON_CANCELLED
    after = acme.get(s.session_id)
    assert (after.turns, after.context_tokens) == (before.turns, before.context_tokens)
    assert after.state == (pb.SESSION_STATE_PAUSED if state == "paused"
                           else pb.SESSION_STATE_WAITING)
    acme.CloseSession(api.CloseSessionRequest(session_id=s.session_id))
    acme.close()
    globex.close()


def test_another_tenants_page_token_shows_nothing_of_theirs(server):
    acme, globex = Client(server.target, "key-acme"), Client(server.target, "key-initech")
    made = [acme.create().session_id for _ in range(3)]
    page = acme.ListSessions(api.ListSessionsRequest(page_size=1))
    assert page.next_page_token
    try:
        theirs = globex.ListSessions(api.ListSessionsRequest(
            page_size=500, page_token=page.next_page_token)).sessions
        assert not set(made) & {x.session_id for x in theirs}
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    for sid in made:
        acme.CloseSession(api.CloseSessionRequest(session_id=sid))
    acme.close()
    globex.close()


# -- session ids ---------------------------------------------------------------------------------
def test_session_ids_carry_at_least_128_random_bits(server):
    c = Client(server.target, "key-initech")
    made = []
    for _ in range(4):
        batch = [c.create().session_id for _ in range(50)]
        made += batch
        for sid in batch:
            c.CloseSession(api.CloseSessionRequest(session_id=sid))
    assert len(set(made)) == len(made)
    raw = []
    for sid in made:
        assert ids.is_valid_session_id(sid), sid
        assert sid.startswith("s_") and len(sid) == 34
        raw.append(base64.urlsafe_b64decode(sid[2:]))
    assert {len(r) for r in raw} == {ids.RANDOM_BYTES} and ids.RANDOM_BYTES * 8 >= 128
    # every bit position is random: each is set in roughly half of 200 ids (binomial, sd ~7)
    nbits = ids.RANDOM_BYTES * 8
    ones = [sum((int.from_bytes(r, "big") >> b) & 1 for r in raw) for b in range(nbits)]
    assert all(55 <= n <= 145 for n in ones), ones
    # and the characters cover the whole base64 alphabet
    assert len(Counter("".join(s[2:] for s in made))) == 64
    c.close()


def test_session_ids_come_from_the_os_random_source(monkeypatch):
    calls = []
    real = ids.secrets.token_urlsafe

    def spy(n):
        calls.append(n)
        return real(n)
    monkeypatch.setattr(ids.secrets, "token_urlsafe", spy)
    sid = ids.new_session_id()
    assert calls == [ids.RANDOM_BYTES] and ids.is_valid_session_id(sid)


@pytest.mark.parametrize("bad", ["", "s_", "s_" + "A" * 31, "s_" + "A" * 33, "s_" + "A" * 31 + "/",
                                 "../../etc/passwd", "s_" + "A" * 32 + "\n", "x" * 5000])
def test_malformed_session_ids_are_invalid_argument(server, bad):
    c = Client(server.target, "key-acme")
    with pytest.raises(grpc.RpcError) as e:
        c.GetSession(api.GetSessionRequest(session_id=bad))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(e.value.details()) < 400                 # the id is not echoed in full
    c.close()


# -- API keys ------------------------------------------------------------------------------------
def test_keys_are_compared_with_compare_digest_against_every_key(monkeypatch):
    seen = []
    real = auth_mod.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)
    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    a = Authenticator([("k-one", "t1"), ("k-two", "t2"), ("k-three", "t3")])
    assert a.tenant_for_key("k-one") == "t1"
    assert len(seen) == 3                      # a match on the first key does not stop the loop
    assert all(isinstance(x, bytes) and len(x) == 32 for pair in seen for x in pair)
    seen.clear()
    with pytest.raises(AuthError):
        a.tenant_for_key("k-on")
    assert len(seen) == 3
    # the raw key is never compared, only its digest
    assert all(b"k-one" not in x for pair in seen for x in pair)


def test_near_miss_keys_are_refused(server):
    for key in ("key-acm", "key-acmee", "KEY-ACME", "Bearer key-acme",
                "key-acme" * 100):
        c = Client(server.target, None)
        with pytest.raises(grpc.RpcError) as e:
            c.stub.GetSession(api.GetSessionRequest(session_id="s_" + "A" * 32),
                              metadata=(("x-api-key", key),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, key
        c.close()


def test_the_server_authenticates_through_the_constant_time_path(server, monkeypatch):
    seen = []
    real = auth_mod.hmac.compare_digest
    monkeypatch.setattr(auth_mod.hmac, "compare_digest",
                        lambda a, b: seen.append(1) or real(a, b))
    c = Client(server.target, "key-globex")
    c.ListSessions(api.ListSessionsRequest())
    assert len(seen) == len(KEYS)
    c.close()


# -- limits ----------------------------------------------------------------------------------------
LIMITS = with_limits(max_sessions_per_tenant=2, max_concurrent_turns=1, max_prompt_tokens=120,
                     max_output_tokens=16, max_message_bytes=3000, max_tools=1)


def test_every_limit_is_enforced(tmp_path):
    cfg = server_config(tmp_path / "data", api_key_file=key_file(tmp_path, KEYS), limits=LIMITS)
    with running_server(cfg) as st:
        c = Client(st.target, "key-acme")

        def refused(call, code, name):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == code, e.value.details()
            assert name in e.value.details(), e.value.details()

        a = c.create().session_id
        refused(lambda: c.create(tools_json=["{}", "{}"]), grpc.StatusCode.INVALID_ARGUMENT,
                "max_tools=1")
        refused(lambda: c.create(sampling=pb.SamplingParams(max_tokens=17)),
                grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens=16")
        refused(lambda: c.generate(a, "x", max_tokens=17), grpc.StatusCode.INVALID_ARGUMENT,
                "max_output_tokens=16")
        refused(lambda: c.generate(a, token_ids=[7] * 121, max_tokens=1),
                grpc.StatusCode.INVALID_ARGUMENT, "max_prompt_tokens=120")
        refused(lambda: c.create(system_prompt="x" * 3100), grpc.StatusCode.RESOURCE_EXHAUSTED,
                "max_message_bytes=3000")
        with pytest.raises(grpc.RpcError) as e:           # gRPC's own cap (2x + 64 KiB)
            c.create(system_prompt="x" * (2 * 3000 + 2**16 + 10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        b = c.create().session_id
        refused(c.create, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sessions_per_tenant=2")
        call = c.Generate(generate_request(a, "long", max_tokens=16, ignore_eos=True))
        next(call)
        refused(lambda: c.generate(b, "too", max_tokens=2), grpc.StatusCode.RESOURCE_EXHAUSTED,
                "max_concurrent_turns=1")
        list(call)
        # nothing was changed by the refused calls; both sessions still work
        assert c.get(a).turns == 1 and c.get(b).turns == 0
        assert c.generate(b, "now", max_tokens=2)[1].session.turns == 1
        c.close()


# -- loopback by default -----------------------------------------------------------------------
def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    out = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].split(":")
            if int(p, 16) != port or f[3] != "0A":            # 0A: LISTEN
                continue
            b = bytes.fromhex(addr)
            if v6:
                b = b"".join(b[i:i + 4][::-1] for i in range(0, 16, 4))
                a6 = ipaddress.IPv6Address(b)
                out.append(str(a6.ipv4_mapped or a6))      # gRPC binds v4 on a v6 socket
            else:
                out.append(str(ipaddress.IPv4Address(b[::-1])))
    return out


def _other_local_ipv4() -> list[str]:
    try:
        text = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    found = [ln.split()[3].split("/")[0] for ln in text.splitlines() if " inet " in ln]
    if not found:
        try:
            found = socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            found = []
    return [a for a in found if not ipaddress.IPv4Address(a).is_loopback]


def test_loopback_is_the_default_and_nothing_else_listens(server):
    assert ServerConfig().host == "127.0.0.1"
    p = argparse.ArgumentParser()
    cli_serve.add_parser(p.add_subparsers(dest="command"))
    assert cli_serve.config_from_args(p.parse_args(["serve"])).host == "127.0.0.1"
    assert server.server.config.host == "127.0.0.1"
    assert _listening_addresses(server.port) == ["127.0.0.1"]
    for addr in _other_local_ipv4():                   # this host's own other interfaces
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, server.port)) != 0, addr


# -- TLS -----------------------------------------------------------------------------------------
def _pki(folder):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, san=None, usage=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(stem, c, k):
        (folder / f"{stem}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("agentkv test CA", ca_key, "agentkv test CA", ca_key, ca=True)
    write("ca", ca, ca_key)
    for stem, san, usage in (
            ("server", [x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
             [ExtendedKeyUsageOID.SERVER_AUTH]),
            ("client", None, [ExtendedKeyUsageOID.CLIENT_AUTH])):
        k = ec.generate_private_key(ec.SECP256R1())
        write(stem, cert(stem, k, "agentkv test CA", ca_key, san=san, usage=usage), k)
    other_key = ec.generate_private_key(ec.SECP256R1())      # a client of another CA
    other_ca = cert("other CA", other_key, "other CA", other_key, ca=True)
    ok = ec.generate_private_key(ec.SECP256R1())
    write("stranger", cert("stranger", ok, "other CA", other_key,
                           usage=[ExtendedKeyUsageOID.CLIENT_AUTH]), ok)
    return {k: str(folder / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem",
                                         "client.key", "stranger.pem", "stranger.key")}


def _tls_stub(target, ca, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read() if key else None,
        certificate_chain=open(cert, "rb").read() if cert else None)
    ch = grpc.secure_channel(target, creds)
    return ch, api_grpc.SessionServiceStub(ch)


def _refused(stub, timeout=5.0):
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSession(api.CreateSessionRequest(), timeout=timeout)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls_through_flags(tmp_path):
    f = _pki(tmp_path)
    p = argparse.ArgumentParser()
    cli_serve.add_parser(p.add_subparsers(dest="command"))
    cfg = cli_serve.config_from_args(p.parse_args(
        ["serve", "--tls-cert", f["server.pem"], "--tls-key", f["server.key"]]))
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) == (f["server.pem"], f["server.key"],
                                                              None)
    tls = server_config(tmp_path / "data", tls_cert=f["server.pem"], tls_key=f["server.key"])
    with running_server(tls) as st:
        ch, stub = _tls_stub(st.target, f["ca.pem"])
        s = stub.CreateSession(api.CreateSessionRequest(), timeout=30).session
        events = list(stub.Generate(generate_request(s.session_id, "hi over TLS", max_tokens=3),
                                    timeout=60))
        assert events[-1].result.session.turns == 1
        ch.close()
        plain = grpc.insecure_channel(st.target)           # plaintext is refused
        _refused(api_grpc.SessionServiceStub(plain))
        plain.close()
        # a client that trusts another CA does not accept the server
        ch, stub = _tls_stub(st.target, f["stranger.pem"])
        _refused(stub)
        ch.close()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(tmp_path):
    f = _pki(tmp_path)
    cfg = server_config(tmp_path / "data", tls_cert=f["server.pem"], tls_key=f["server.key"],
                        tls_client_ca=f["ca.pem"])
    with running_server(cfg) as st:
        ch, stub = _tls_stub(st.target, f["ca.pem"], f["client.pem"], f["client.key"])
        assert stub.CreateSession(api.CreateSessionRequest(), timeout=30).session.session_id
        ch.close()
        for cert, key in ((None, None), (f["stranger.pem"], f["stranger.key"])):
            ch, stub = _tls_stub(st.target, f["ca.pem"], cert, key)
            _refused(stub)
            ch.close()
        plain = grpc.insecure_channel(st.target)
        _refused(api_grpc.SessionServiceStub(plain))
        plain.close()


def test_incomplete_or_unreadable_tls_flags_are_refused(tmp_path):
    f = _pki(tmp_path)
    with pytest.raises(TLSConfigError, match="both --tls-cert and --tls-key"):
        ServerConfig(tls_cert=f["server.pem"])
    with pytest.raises(TLSConfigError, match="both --tls-cert and --tls-key"):
        ServerConfig(tls_key=f["server.key"])
    with pytest.raises(TLSConfigError, match="--tls-client-ca"):
        ServerConfig(tls_client_ca=f["ca.pem"])
    with pytest.raises(TLSConfigError, match="--tls-key"):
        server_credentials(f["server.pem"], str(tmp_path / "missing.key"))
    notpem = tmp_path / "x.pem"
    notpem.write_text("hello")
    with pytest.raises(TLSConfigError, match="not a PEM"):
        server_credentials(str(notpem), f["server.key"])
    p = argparse.ArgumentParser()
    cli_serve.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["serve", "--tls-cert", f["server.pem"]])
    assert cli_serve.run(args) == 2
