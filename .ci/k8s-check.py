"""Checks examples/k8s/ beyond the schema that `kubernetes-validate --strict` checks:
the rules Kubernetes applies when a Job is created (podFailurePolicy needs
restartPolicy Never; backoffLimitPerIndex needs completionMode Indexed; an Indexed
Job's parallelism fits its completions) and the rules of snapring's scale-out (the pods
get SNAPRING_SHARDS equal to completions and the Job's name as the run id; the failure
policy treats snapring's exit codes, read from src/cli/exit_code.rs, as
docs/scale-out.md says: 64 fails the Job, 1 and 2 fail the index, 3 and 75 are retried;
no flag a shard worker refuses). Exits 1 on the first
problem, naming the file and the rule."""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def exit_codes():
    text = (ROOT / "src/cli/exit_code.rs").read_text()
    codes = {name: int(num) for name, num in re.findall(r"^\s*(\w+) = (\d+),", text, re.M)}
    if not {"Complete", "Failed", "Partial", "Incomplete", "Usage", "Retry"} <= codes.keys():
        sys.exit(f"src/cli/exit_code.rs: expected the six exit codes, found {codes}")
    return codes


def fail(path, why):
    sys.exit(f"{path}: {why}")


def check_job(path, spec, codes):
    pod = spec["template"]["spec"]
    if "podFailurePolicy" in spec and pod.get("restartPolicy") != "Never":
        fail(path, "podFailurePolicy needs the pod's restartPolicy to be Never")
    if "backoffLimitPerIndex" in spec and spec.get("completionMode") != "Indexed":
        fail(path, "backoffLimitPerIndex needs completionMode: Indexed")
    if spec.get("completionMode") != "Indexed":
        return
    completions = spec["completions"]
    if spec.get("parallelism", 1) > completions:
        fail(path, "parallelism exceeds completions")
    (container,) = [c for c in pod["containers"] if c["name"] == "snapring"]
    env = {e["name"]: e for e in container.get("env", [])}
    if env.get("SNAPRING_SHARDS", {}).get("value") != str(completions):
        fail(path, f"SNAPRING_SHARDS must be the Job's completions ({completions})")
    run_id = env.get("SNAPRING_RUN_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if run_id.get("fieldPath") != "metadata.labels['batch.kubernetes.io/job-name']":
        fail(path, "SNAPRING_RUN_ID must come from the Job's name (batch.kubernetes.io/job-name)")
    # docs/scale-out.md, "Exit codes": 64 fails every worker alike (FailJob); 1 is one
    # worker's permanent failure (its pre_command, its node's source mount: the others
    # take its units) and 2 a published partial snapshot, neither retried (FailIndex);
    # 3 and 75 are retried.
    want = {
        "FailJob": {codes["Usage"]},
        "FailIndex": {codes["Failed"], codes["Partial"]},
    }
    named = {"FailJob": set(), "FailIndex": set()}
    for rule in spec.get("podFailurePolicy", {}).get("rules", []):
        on = rule.get("onExitCodes")
        if not on:
            continue
        if on.get("containerName") != "snapring" or on.get("operator") != "In":
            fail(path, "an onExitCodes rule must be `In` on the snapring container")
        if rule["action"] not in named:
            fail(path, f"exit codes with action {rule['action']}: only FailJob and FailIndex are expected")
        named[rule["action"]] |= set(on["values"])
    if "podFailurePolicy" in spec and named != want:
        fail(path, f"podFailurePolicy must be {want} by snapring's exit codes, not {named}")
    retried = {codes["Retry"], codes["Incomplete"]}
    if retried & (named["FailJob"] | named["FailIndex"]):
        fail(path, f"exit codes {sorted(retried)} must be retried")
    if "--with-atime" in container.get("args", []) and any("s3://" in a for a in container.get("args", [])):
        fail(path, "--with-atime is refused with --shard into a repository (docs/scale-out.md)")


def main():
    codes = exit_codes()
    files = sorted((ROOT / "examples/k8s").glob("*.yaml"))
    if not files:
        sys.exit("examples/k8s: no manifests")
    jobs = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "CronJob":
                check_job(path.name, doc["spec"]["jobTemplate"]["spec"], codes)
                jobs += 1
            elif doc["kind"] == "Job":
                check_job(path.name, doc["spec"], codes)
                jobs += 1
    print(f"examples/k8s: {len(files)} files, {jobs} jobs follow the scale-out rules")


main()
