"""tf.distribute: MirroredStrategy on two logical CPUs, and two worker processes.

Each scenario runs in fresh processes (logical devices and TF_CONFIG must be
set before TensorFlow starts); every process is bounded in time.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _result(output):
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no RESULT line in output:\n{output[-3000:]}")


def test_mirrored_strategy_two_replicas():
    proc = subprocess.run([sys.executable, os.path.join(HERE, "distributed", "mirrored_worker.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _result(proc.stdout)
    # Same training as one device, up to FP32 summation order of the all-reduce.
    assert out["max_weight_diff"] < 1e-4
    # Statistics are all-reduced: the layer scales equal the one-device ones,
    # and the small loss made them real scales, not 1.
    assert list(out["mirrored_scales"].values()) == list(out["single_scales"].values())
    assert max(out["single_scales"].values()) > 1.0
    assert out["replicas_agree"]
    # A non-finite gradient on one replica skips the step on all of them.
    assert out["skipped"] and out["scale_halved"]
    assert out["sr_per_replica_matches_single"]


def test_mirrored_strategy_loss_scaling_of_a_recurrent_layer():
    """ALS with a GRU on two replicas.  Each replica scales the errors of its
    while-loop gradient itself (tf.distribute cannot all-reduce inside control
    flow: this once raised "merge_call called while defining a new graph"),
    and reads its own copy of the hoisted recurrent weights (the second
    replica once got no gradient for them)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed", "mirrored_recurrent_worker.py")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _result(proc.stdout)
    assert out["max_weight_diff"] < 1e-4
    mirrored, single = list(out["mirrored_scales"].values()), list(out["single_scales"].values())
    assert mirrored and mirrored == single
    assert max(out["mirrored_scales"].values()) > 1.0
    assert out["replicas_agree"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_processes():
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "distributed", "multi_worker.py")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-3000:]
            outputs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    a, b = outputs
    assert {a["task"], b["task"]} == {0, 1}
    assert a["checksum"] == b["checksum"]  # workers hold identical weights
    assert a["scales"] == b["scales"] and max(a["scales"]) > 1.0
    assert all(l == l and l < 10 for l in a["losses"])  # finite losses
