"""engine.remote through a file:// remote (a shared mount): a second runner's local miss is a verified
remote hit; a corrupt or partial remote object is a miss with a warning; concurrent writers of one key
leave a valid entry; a URL with credentials is refused. (tests/test_remote_cache.py runs the same
against a real S3 API server.)"""

import hashlib
import threading

import pytest

from pipeline.engine.cache import StageCache
from pipeline.engine.errors import InputError
from pipeline.engine.remote import RemoteCache, check_url

OUT = ("out.txt", "weights.bin")


def _staged(tmp_path, text="hello"):
    src = tmp_path / f"src-{hashlib.sha256(text.encode()).hexdigest()[:6]}"
    src.mkdir(exist_ok=True)
    (src / "out.txt").write_text(text)
    (src / "weights.bin").write_bytes(bytes(range(256)) * 64)
    return src


def _runner(tmp_path, name, warnings):
    remote = RemoteCache(f"file://{tmp_path / 'shared'}", warn=warnings.append)
    return StageCache(tmp_path / name, warn=warnings.append, remote=remote)


def test_a_second_runner_gets_the_first_runners_entry_from_the_remote(tmp_path):
    warnings = []
    a, b = _runner(tmp_path, "a", warnings), _runner(tmp_path, "b", warnings)
    a.put("k1", _staged(tmp_path), OUT, {"n": 1})
    assert sorted(p.name for p in (tmp_path / "shared" / "stages").iterdir()) == ["k1.json"]
    entry, record = b.get("k1", OUT)
    assert b.source["k1"] == "remote" and record == {"n": 1}
    assert (entry / "out.txt").read_text() == "hello" and entry.parent == tmp_path / "b" / "stages"
    assert b.get("k1", OUT) and b.source["k1"] == "local", "restored locally: the next get is local"
    assert b.get("k2", OUT) is None and not warnings
    assert not [p for p in (tmp_path / "shared").rglob("*") if ".tmp-" in p.name], "no temporary object left"


def test_a_warm_local_cache_fills_an_empty_remote(tmp_path):
    warnings = []
    StageCache(tmp_path / "a").put("k1", _staged(tmp_path), OUT, {"n": 1})  # made before the remote existed
    assert _runner(tmp_path, "a", warnings).get("k1", OUT)
    assert _runner(tmp_path, "b", warnings).get("k1", OUT)[1] == {"n": 1} and not warnings


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_a_corrupt_partial_or_missing_remote_blob_is_a_miss_with_a_warning(tmp_path, damage):
    warnings = []
    _runner(tmp_path, "a", warnings).put("k1", _staged(tmp_path), OUT, {})
    blob = max((tmp_path / "shared" / "blobs").iterdir(), key=lambda p: p.stat().st_size)  # weights.bin
    data = blob.read_bytes()
    if damage == "flipped":
        blob.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncated":
        blob.write_bytes(data[: len(data) // 2])
    else:
        blob.unlink()
    b = _runner(tmp_path, "b", warnings)
    assert b.get("k1", OUT) is None
    assert len(warnings) == 1 and "k1" in warnings[0] and ("corrupt" in warnings[0] or "No such file" in warnings[0])
    assert not (tmp_path / "b" / "stages" / "k1").exists(), "nothing half-restored is left locally"


def test_concurrent_writers_of_one_key_leave_a_valid_entry(tmp_path):
    warnings = []
    runners = [_runner(tmp_path, f"w{i}", warnings) for i in range(4)]
    src = _staged(tmp_path)
    threads = [threading.Thread(target=r.put, args=("k1", src, OUT, {"n": 1})) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not warnings
    assert _runner(tmp_path, "reader", warnings).get("k1", OUT)[1] == {"n": 1} and not warnings


def test_an_unreachable_remote_is_a_warning_and_the_local_cache_still_works(tmp_path):
    warnings = []
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the remote directory should be")
    cache = StageCache(tmp_path / "a", warn=warnings.append, remote=RemoteCache(f"file://{blocker}", warnings.append))
    cache.put("k1", _staged(tmp_path), OUT, {"n": 1})
    cache.put("k2", _staged(tmp_path, "other"), OUT, {"n": 2})
    assert cache.get("k1", OUT)[1] == {"n": 1} and cache.get("k3", OUT) is None
    # one warning for the whole run: the first failure turns the remote off (a dead endpoint costs one timeout)
    assert len(warnings) == 1 and "goes on without the remote cache" in warnings[0], warnings


def test_a_remote_url_with_credentials_or_without_scheme_is_refused():
    with pytest.raises(InputError, match="must not carry credentials"):
        check_url("https://user:secret@example.invalid/cache")
    for url in ("bucket/prefix", "s3:/bucket/typo", "file:/tmp/x"):  # a one-slash typo would be a local folder
        with pytest.raises(InputError, match="with a scheme"):
            check_url(url)
    check_url("s3://bucket/prefix")
    check_url("")
