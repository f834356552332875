#!/usr/bin/env python3
"""The stand-in for the Strimzi and Spark operators of the bundled lambda stacks.

The test environment has no real operators (KWOK runs no containers). This writes, through the
status subresource, what the operators would write once their resources are up: Ready for
Kafka/KafkaTopic/KafkaUser, the node ids of a KafkaNodePool, RUNNING for a SparkApplication, each for the
object's current generation. Tests and the demo start it beside a sync so that driftless' declared
health checks (health/operators.yaml) are exercised as they would be against the real operators.

    standin-operator.py --kubectl KUBECTL --kubeconfig FILE [--interval SECONDS]
"""
import argparse
import json
import subprocess
import sys
import time

KINDS = [
    "kafkas.kafka.strimzi.io",
    "kafkanodepools.kafka.strimzi.io",
    "kafkatopics.kafka.strimzi.io",
    "kafkausers.kafka.strimzi.io",
    "sparkapplications.sparkoperator.k8s.io",
]


def status_for(kind, obj):
    gen = obj["metadata"].get("generation", 1)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if kind.startswith("kafkanodepools."):
        replicas = obj.get("spec", {}).get("replicas", 0)
        return {"observedGeneration": gen, "nodeIds": list(range(replicas)), "replicas": replicas}
    if kind.startswith("sparkapplications."):
        return {"applicationState": {"state": "RUNNING"}, "submissionAttempts": 1}
    return {
        "observedGeneration": gen,
        "conditions": [{"type": "Ready", "status": "True", "reason": "StandIn",
                        "message": "ready (stand-in operator)", "lastTransitionTime": now}],
    }


def current(kind, obj):
    status = obj.get("status") or {}
    if kind.startswith("sparkapplications."):
        return bool(status.get("applicationState"))
    return status.get("observedGeneration") == obj["metadata"].get("generation", 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kubectl", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    a = p.parse_args()
    kubectl = [a.kubectl, "--kubeconfig", a.kubeconfig]
    while True:
        for kind in KINDS:
            got = subprocess.run(kubectl + ["get", kind, "-A", "-o", "json"],
                                 capture_output=True, text=True)
            if got.returncode != 0:
                continue  # the CRD is not there (yet)
            for obj in json.loads(got.stdout).get("items", []):
                if current(kind, obj):
                    continue
                meta = obj["metadata"]
                patch = json.dumps({"status": status_for(kind, obj)})
                subprocess.run(kubectl + ["patch", kind, meta["name"], "-n", meta["namespace"],
                                          "--subresource=status", "--type=merge", "-p", patch],
                               capture_output=True, text=True)
        sys.stdout.flush()
        time.sleep(a.interval)


if __name__ == "__main__":
    main()
