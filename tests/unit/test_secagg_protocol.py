"""SecAgg+ end to end: the session, the client and server state machines, dropouts, aborts and
tampering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.privacy.secagg import (
    ClientExcludedError,
    MalformedMessageError,
    RoundMismatchError,
    RoundParams,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggInputError,
    SecAggServer,
    SecAggSession,
    StageError,
    UnknownClientError,
)
from fedrec.privacy.secagg.masks import MaskStream
from fedrec.privacy.secagg.messages import (
    CIPHERTEXT_BYTES,
    HEADER_BYTES,
    SHARE_BYTES,
    ForwardedShares,
    Kind,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
)


def _inputs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, dim))


def _run(session: SecAggSession, x: np.ndarray, submit: list[int], dropped: set[int]) -> np.ndarray:
    for c in submit:
        session.submit(c, x[c])
    return session.finish(dropped).total


def test_sum_matches_plaintext_within_quantization_error() -> None:
    n, dim = 20, 300
    x = _inputs(n, dim)
    s = SecAggSession(range(n), dim, SecAggConfig(), round_=4, seed=b"public")
    result_total = _run(s, x, list(range(n)), set())
    step = s.params.quantizer.step
    assert np.max(np.abs(result_total - x.sum(axis=0))) <= n * step
    assert result_total.dtype == np.float64


def test_masks_cancel_exactly_in_the_ring() -> None:
    """Exact inputs (multiples of a power-of-two step) quantize deterministically, so the ring
    sum must be bit-exact; each upload on the wire must still look nothing like its input."""
    n, dim = 12, 64
    cfg = SecAggConfig(neighbours=4, scale=2.0**20, bits=32)
    ints = np.random.default_rng(1).integers(-(2**20), 2**20, size=(n, dim))
    uploads: dict[int, np.ndarray] = {}

    def spy(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is Kind.MASKED_INPUT:
            uploads[c] = MaskedInput.from_bytes(data).vector.copy()
        return data

    s = SecAggSession(range(n), dim, cfg, round_=0, seed=1, wire_hook=spy)
    for c in range(n):
        s.submit(c, ints[c] / 2.0**20)
    result = s.finish()
    expected = ints.sum(axis=0).astype(np.int64).astype(np.uint32)
    np.testing.assert_array_equal(result.ring_sum, expected)
    np.testing.assert_array_equal(result.total, ints.sum(axis=0) / 2.0**20)
    for c, y in uploads.items():
        assert np.mean(y == ints[c].astype(np.int64).astype(np.uint32)) < 0.05
    # Pairwise masks cancel on their own: sum of uploads minus the self-masks is the input sum.
    total = np.zeros(dim, dtype=np.uint32)
    stream = MaskStream(dim, np.uint32)
    for c, y in uploads.items():
        total += y
        stream.subtract(total, s._clients[c]._seed)
    np.testing.assert_array_equal(total, expected)


def test_clients_that_never_submit_have_their_pairwise_masks_removed() -> None:
    n, dim = 16, 50
    x = _inputs(n, dim, 2)
    s = SecAggSession(range(n), dim, SecAggConfig(neighbours=6), round_=1, seed=2)
    submit = [c for c in range(n) if c not in (3, 8)]
    for c in submit:
        s.submit(c, x[c])
    result = s.finish()
    assert result.included == tuple(submit)
    assert set(result.excluded) == {3, 8}
    np.testing.assert_allclose(result.total, x[submit].sum(0), atol=n * s.params.quantizer.step)


def test_dropouts_after_submission_up_to_the_threshold_still_reconstruct() -> None:
    n, dim = 11, 40  # complete graph: k = 10, t = ceil(0.5 * 11) = 6
    x = _inputs(n, dim, 3)
    s = SecAggSession(range(n), dim, SecAggConfig(neighbours=10, threshold=0.5), round_=2, seed=3)
    assert (s.params.k, s.params.t) == (10, 6)
    for c in range(n):
        s.submit(c, x[c])
    result = s.finish(dropped={0, 2, 4, 6, 8})  # 6 of 11 survive unmasking: exactly t
    assert result.included == tuple(range(n))  # their inputs arrived: they are in the sum
    assert result.unmasking_survivors == (1, 3, 5, 7, 9, 10)
    np.testing.assert_allclose(result.total, x.sum(0), atol=n * s.params.quantizer.step)


def test_too_many_dropouts_abort_with_a_clear_message_and_no_result() -> None:
    n, dim = 11, 40
    x = _inputs(n, dim, 4)
    s = SecAggSession(range(n), dim, SecAggConfig(neighbours=10, threshold=0.5), round_=2, seed=3)
    for c in range(n):
        s.submit(c, x[c])
    with pytest.raises(SecAggAbort, match=r"only 5 of 11 clients survived unmasking.*t=6"):
        s.finish(dropped={0, 2, 4, 6, 8, 10})
    with pytest.raises(StageError):
        s.finish()  # no second chance to get a partial result


def test_too_few_submissions_abort() -> None:
    s = SecAggSession(range(11), 8, SecAggConfig(neighbours=10, threshold=0.5), round_=0, seed=0)
    for c in range(5):
        s.submit(c, np.zeros(8))
    with pytest.raises(SecAggAbort, match=r"only 5 of 11 clients submitted.*t=6"):
        s.finish()


def _flip_ciphertext(target_kind: Kind, target: int, sender_index: int = 0):  # type: ignore[no-untyped-def]
    """A wire hook that flips one byte inside one AES-GCM share ciphertext."""

    def hook(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is target_kind and c == target:
            entry = HEADER_BYTES + 4 + sender_index * (8 + CIPHERTEXT_BYTES)
            pos = entry + 8 + 30  # inside the ciphertext body, past id and nonce
            data = data[:pos] + bytes([data[pos] ^ 0x40]) + data[pos + 1 :]
        return data

    return hook


@pytest.mark.parametrize("where", [Kind.FORWARDED_SHARES, Kind.SHARE_KEYS])
def test_tampered_share_is_detected_and_its_sender_dropped(where: Kind) -> None:
    n, dim = 14, 30
    x = _inputs(n, dim, 5)
    params = RoundParams.create(range(n), dim, SecAggConfig(neighbours=6), 0, 9)
    victim = 5
    if where is Kind.FORWARDED_SHARES:
        # The first ciphertext forwarded to `victim` comes from its smallest neighbour.
        culprit = min(params.neighbours(victim))
        hook = _flip_ciphertext(where, victim)
    else:
        culprit = victim  # its first outgoing ciphertext is corrupted on the way up
        hook = _flip_ciphertext(where, victim)
    s = SecAggSession(range(n), dim, SecAggConfig(neighbours=6), 0, 9, wire_hook=hook)
    assert culprit not in s.active and len(s.active) == n - 1
    with pytest.raises(ClientExcludedError, match=f"client {culprit}"):
        s.submit(culprit, x[culprit])
    others = [c for c in range(n) if c != culprit]
    for c in others:
        s.submit(c, x[c])
    result = s.finish()
    assert culprit in result.excluded and culprit not in result.included
    np.testing.assert_allclose(result.total, x[others].sum(0), atol=n * s.params.quantizer.step)


def test_corrupted_unmasking_share_aborts_instead_of_returning_garbage() -> None:
    n, dim = 9, 20

    def hook(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is Kind.UNMASK_SHARES and c == 1:
            msg = UnmaskShares.from_bytes(data)
            owner, share = msg.seed_shares[0]
            bad = bytes([share[0] ^ 1]) + share[1:]
            return UnmaskShares(
                msg.round_, msg.client_id, ((owner, bad), *msg.seed_shares[1:]), msg.key_shares
            ).to_bytes()
        return data

    s = SecAggSession(range(n), dim, SecAggConfig(threshold=1.0), 0, 0, wire_hook=hook)
    for c in range(n):
        s.submit(c, np.zeros(dim))
    with pytest.raises(SecAggAbort, match="corrupted"):
        s.finish()


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (0, ord("X"), MalformedMessageError),  # magic
        (2, 7, MalformedMessageError),  # version
        (3, 99, MalformedMessageError),  # unknown kind
        (3, Kind.MASKING_REQUEST, StageError),  # a message of another stage
        (11, 1, RoundMismatchError),  # round 0 -> 1
    ],
)
def test_tampered_header_raises_a_clear_error(
    offset: int, value: int, error: type[Exception]
) -> None:
    def hook(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is Kind.ADVERTISE_KEYS and c == 2:
            data = data[:offset] + bytes([value]) + data[offset + 1 :]
        return data

    with pytest.raises(error):
        SecAggSession(range(6), 4, SecAggConfig(), 0, 0, wire_hook=hook)


def test_truncated_or_foreign_client_upload_is_rejected() -> None:
    def truncate(kind: Kind, c: int, data: bytes) -> bytes:
        return data[:-3] if kind is Kind.MASKED_INPUT else data

    s = SecAggSession(range(6), 4, SecAggConfig(), 0, 0, wire_hook=truncate)
    with pytest.raises(MalformedMessageError, match="masked vector has"):
        s.submit(0, np.zeros(4))

    def rename(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is Kind.SHARE_KEYS and c == 0:
            return data[:12] + (999).to_bytes(8, "big") + data[20:]
        return data

    with pytest.raises(UnknownClientError, match="999"):
        SecAggSession(range(6), 4, SecAggConfig(), 0, 0, wire_hook=rename)


def test_session_misuse_raises() -> None:
    s = SecAggSession([10, 20, 30, 40], 3, SecAggConfig(), 0, 0)
    with pytest.raises(UnknownClientError):
        s.submit(11, np.zeros(3))
    with pytest.raises(SecAggInputError, match="shape"):
        s.submit(10, np.zeros(4))
    assert s.submit(10, np.zeros(3)) == HEADER_BYTES + 5 + 3 * 4  # retry after a bad vector
    with pytest.raises(StageError, match="already"):
        s.submit(10, np.zeros(3))
    with pytest.raises(UnknownClientError):
        s.finish(dropped=[99])
    for c in (20, 30):
        s.submit(c, np.ones(3))
    result = s.finish(dropped=[40])
    np.testing.assert_allclose(result.total, [2.0, 2.0, 2.0], atol=1e-6)
    with pytest.raises(StageError):
        s.submit(40, np.zeros(3))
    traffic = s.bytes_per_client
    assert traffic[40].up > 0 and traffic[10].up > traffic[40].up  # 40 never uploaded its vector
    assert all(v >= 0 for v in s.client_seconds.values()) and s.server_seconds > 0


def test_bits_64_and_non_contiguous_ids() -> None:
    ids = [7, 1000, 3, 2**40, 55, 12, 9, 8]
    dim = 25
    x = _inputs(len(ids), dim, 6) * 3
    s = SecAggSession(ids, dim, SecAggConfig(bits=64, clip=3.0, neighbours=4), 2**33, b"x")
    for i, c in enumerate(ids):
        s.submit(c, x[i])
    result = s.finish(dropped=[ids[0]])
    assert result.ring_sum.dtype == np.uint64
    np.testing.assert_allclose(result.total, x.sum(0), atol=len(ids) * s.params.quantizer.step)


# The state machines, driven by hand ---------------------------------------------------------
def _through_stage_1(
    n: int, dim: int, cfg: SecAggConfig
) -> tuple[RoundParams, SecAggServer, dict[int, SecAggClient]]:
    params = RoundParams.create(range(n), dim, cfg, 5, b"manual")
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    for c, msg in server.neighbour_keys().items():
        server.receive_share_keys(clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        server.receive_receipt(clients[c].receive_shares(msg))
    return params, server, clients


def test_client_refuses_to_reveal_both_secrets_of_a_neighbour() -> None:
    _, server, clients = _through_stage_1(6, 4, SecAggConfig())
    for c, req in server.masking_requests().items():
        server.receive_masked_input(clients[c].masked_input(req, np.zeros(4)))
    req = server.unmask_requests()[0]
    greedy = UnmaskRequest(req.round_, 0, req.survivors, (req.survivors[1],))
    with pytest.raises(MalformedMessageError, match="refusing to reveal both"):
        clients[0].unmask(greedy)
    stranger = UnmaskRequest(req.round_, 0, req.survivors, (77,))
    with pytest.raises(UnknownClientError, match="77"):
        clients[0].unmask(stranger)
    partial = UnmaskRequest(req.round_, 0, req.survivors[:-1], ())
    with pytest.raises(MalformedMessageError, match="omits"):
        clients[0].unmask(partial)
    with pytest.raises(RoundMismatchError):
        clients[0].unmask(UnmaskRequest(99, 0, req.survivors, req.dropped))
    assert isinstance(clients[0].unmask(req), UnmaskShares)  # the honest request still works


def test_state_machines_reject_out_of_order_and_foreign_messages() -> None:
    _, server, clients = _through_stage_1(6, 4, SecAggConfig())
    with pytest.raises(StageError):
        clients[0].receive_shares(ForwardedShares(5, 0, ()))  # already past that stage
    with pytest.raises(StageError):
        server.receive_masked_input(
            MaskedInput(5, 0, 32, np.zeros(4, dtype=np.uint32))
        )  # stage 1 not closed yet
    requests = server.masking_requests()
    with pytest.raises(UnknownClientError, match="addressed to client 1"):
        clients[0].masked_input(requests[1], np.zeros(4))
    with pytest.raises(UnknownClientError, match="not in this round"):
        server.receive_masked_input(MaskedInput(5, 42, 32, np.zeros(4, dtype=np.uint32)))
    with pytest.raises(RoundMismatchError):
        server.receive_masked_input(MaskedInput(6, 0, 32, np.zeros(4, dtype=np.uint32)))
    with pytest.raises(MalformedMessageError, match="expected 4"):
        server.receive_masked_input(MaskedInput(5, 0, 32, np.zeros(5, dtype=np.uint32)))
    good = clients[0].masked_input(requests[0], np.zeros(4))
    server.receive_masked_input(good)
    with pytest.raises(MalformedMessageError, match="second"):
        server.receive_masked_input(good)


def test_server_checks_unmasking_answers() -> None:
    _, server, clients = _through_stage_1(6, 4, SecAggConfig())
    for c, req in server.masking_requests().items():
        server.receive_masked_input(clients[c].masked_input(req, np.zeros(4)))
    requests = server.unmask_requests()
    answer = clients[0].unmask(requests[0])
    owners = tuple(o for o, _ in answer.seed_shares)
    garbage = tuple((o, b"\xff" * SHARE_BYTES) for o in owners)
    with pytest.raises(MalformedMessageError, match="GF"):
        server.receive_unmask_shares(UnmaskShares(5, 0, garbage, ()))
    with pytest.raises(MalformedMessageError, match="does not answer"):
        server.receive_unmask_shares(UnmaskShares(5, 0, answer.seed_shares[1:], ()))
    server.receive_unmask_shares(answer)
    with pytest.raises(MalformedMessageError, match="second"):
        server.receive_unmask_shares(answer)
    with pytest.raises(StageError, match="cannot"):
        server.unmask_requests()


# Properties ---------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(3, 18),
    dim=st.integers(1, 40),
    k=st.sampled_from([None, 2, 4, 6]),
    threshold=st.sampled_from([0.5, 0.6, 0.8]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_result_is_the_sum_over_arrivals_or_a_justified_abort(
    n: int, dim: int, k: int | None, threshold: float, seed: int, data: st.DataObject
) -> None:
    cfg = SecAggConfig(neighbours=k, threshold=threshold)
    clients = list(range(n))
    never = set(data.draw(st.lists(st.sampled_from(clients), max_size=n // 2, unique=True)))
    later = set(data.draw(st.lists(st.sampled_from(clients), max_size=n // 2, unique=True)))
    x = _inputs(n, dim, seed % 1000)
    s = SecAggSession(clients, dim, cfg, round_=seed % 7, seed=seed)
    p = s.params
    submitted = [c for c in clients if c not in never]
    u4 = set(submitted) - later
    # Oracle: which secrets the server needs, and whether t of their holders survive.
    need_ok = len(submitted) >= p.t and len(u4) >= p.t
    for u in clients:
        # Seeds of arrivals; mask keys of non-arrivals with a neighbour that arrived.
        if u in submitted or set(p.neighbours(u)) & set(submitted):
            need_ok &= len((set(p.neighbours(u)) | {u}) & u4) >= p.t
    for c in submitted:
        s.submit(c, x[c])
    if need_ok:
        result = s.finish(dropped=never | later)
        assert result.included == tuple(submitted)
        assert result.unmasking_survivors == tuple(sorted(u4))
        np.testing.assert_allclose(
            result.total, x[submitted].sum(0), atol=len(submitted) * p.quantizer.step + 1e-12
        )
    else:
        with pytest.raises(SecAggAbort, match=r"t=\d+"):
            s.finish(dropped=never | later)


def test_low_order_public_key_gets_its_owner_dropped() -> None:
    n, dim = 10, 12
    x = _inputs(n, dim, 8)

    def hook(kind: Kind, c: int, data: bytes) -> bytes:
        if kind is Kind.ADVERTISE_KEYS and c == 3:  # mask key := the all-zero (low-order) point
            return data[: HEADER_BYTES + 32] + bytes(32) + data[HEADER_BYTES + 64 :]
        return data

    s = SecAggSession(range(n), dim, SecAggConfig(neighbours=4), 0, 0, wire_hook=hook)
    assert s.active == frozenset(range(n)) - {3}
    others = [c for c in range(n) if c != 3]
    for c in others:
        s.submit(c, x[c])
    np.testing.assert_allclose(s.finish().total, x[others].sum(0), atol=n * s.params.quantizer.step)


def test_clients_left_with_too_few_share_holders_are_excluded_not_fatal() -> None:
    n, dim = 12, 10
    config = SecAggConfig(neighbours=4, threshold=0.5)
    params = RoundParams.create(range(n), dim, config, 0, b"thin")
    assert params.t == 3
    victim = 0
    gone = set(params.neighbours(victim)[:3])  # 3 of its 4 neighbours never share keys
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    for c, msg in server.neighbour_keys().items():
        if c not in gone:
            server.receive_share_keys(clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        server.receive_receipt(clients[c].receive_shares(msg))
    requests = server.masking_requests()
    assert victim not in requests and not gone & set(requests)
    x = _inputs(n, dim, 9)
    for c, req in requests.items():
        server.receive_masked_input(clients[c].masked_input(req, x[c]))
    for c, req in server.unmask_requests().items():
        server.receive_unmask_shares(clients[c].unmask(req))
    result = server.aggregate()
    assert result.included == tuple(sorted(requests))
    np.testing.assert_allclose(
        result.total, x[list(result.included)].sum(0), atol=n * params.quantizer.step
    )


def test_merged_forward_and_mask_stage_sums_the_included_and_a_tampered_recipient_drops() -> None:
    """Shares forwarded with the masking request (no receipts): a recipient whose share fails
    authentication cannot mask with its sender and drops out; the rest still sum exactly."""
    n, dim = 10, 40
    x = _inputs(n, dim, 5)
    params = RoundParams.create(range(n), dim, SecAggConfig(neighbours=4), 2, b"merged")
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    for u, msg in server.neighbour_keys().items():
        server.receive_share_keys(clients[u].share_keys(msg))
    merged = server.forward_and_request_masks()
    assert set(merged) == set(range(n))
    victim = 3
    fwd, req = merged[victim]
    (src, ct), *rest = fwd.ciphertexts
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    tampered = ForwardedShares(fwd.round_, fwd.client_id, ((src, bad), *rest))
    assert clients[victim].receive_shares(tampered).rejected == (src,)
    with pytest.raises(UnknownClientError):
        clients[victim].masked_input(req, x[victim])
    for u, (f, r) in merged.items():
        if u != victim:
            assert clients[u].receive_shares(f).rejected == ()
            server.receive_masked_input(clients[u].masked_input(r, x[u]))
    for u, r in server.unmask_requests().items():
        server.receive_unmask_shares(clients[u].unmask(r))
    result = server.aggregate()
    included = [c for c in range(n) if c != victim]
    assert result.included == tuple(included)
    np.testing.assert_allclose(result.total, x[included].sum(0), atol=n * params.quantizer.step)
