#!/usr/bin/python3
"""The configuration half of deploy/check: every YAML and JSON file of deploy/ parses, and
the bundles agree with parleyd and with each other (option names, ports, probes, the drain's
timing, the user id). Run by deploy/check, which passes the option table of the parleyd it
just built (`parleyd --help`); prints one line per check ("ok" or "FAIL"), which deploy/check
counts, and exits 1 if any failed.

    check-config.py TOP HELP_FILE
"""
import glob
import json
import os
import re
import sys

import yaml

top, help_file = sys.argv[1], sys.argv[2]
deploy = os.path.join(top, "deploy")
failed = 0
passed = 0

# Variables the bundles may name before parleyd has them (an older parleyd ignores variables
# it does not know); empty while every name is a real option.
ANNOUNCED = set()
# The flush after the drain: the writer's queue, then at most 3 s for sockets (ARCHITECTURE.md,
# "Shutdown"), plus the drain timer's 0.2 s: what the grace periods must leave on top.
FLUSH_S = 4


def check(ok, what, detail=""):
    global failed, passed
    if ok:
        passed += 1
        print(f"ok    {what}")
    else:
        failed += 1
        print(f"FAIL  {what}{': ' + detail if detail else ''}")
    return ok


def rel(p):
    return os.path.relpath(p, top)


def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- the options of parleyd --help: flag, variable, default ---
options = {}
with open(help_file) as f:
    for line in f:
        m = re.match(r"^(--[a-z0-9-]+)\s+(PARLEY_[A-Z0-9_]+)\s+(\S+)", line)
        if m:
            options[m.group(2)] = m.group(3)
check(len(options) >= 30 and "PARLEY_LISTEN" in options, "parleyd --help lists the options",
      f"{len(options)} found")


def default(var):
    return options.get(var)


# --- every YAML file parses ---
yamls = sorted(glob.glob(os.path.join(deploy, "**", "*.y*ml"), recursive=True, include_hidden=True)
               + glob.glob(os.path.join(deploy, "**", ".ebextensions", "*.config"), recursive=True, include_hidden=True))
docs = {}
for p in yamls:
    try:
        docs[rel(p)] = load_yaml(p)
        check(len(docs[rel(p)]) > 0, f"YAML parses: {rel(p)}", "no document")
    except yaml.YAMLError as e:
        check(False, f"YAML parses: {rel(p)}", str(e).replace("\n", " "))

# --- JSON ---
eb = os.path.join(deploy, "elastic-beanstalk")
try:
    with open(os.path.join(eb, "Dockerrun.aws.json.in")) as f:
        dockerrun = json.loads(f.read().replace("@IMAGE@", "parley:check"))
    check(dockerrun.get("AWSEBDockerrunVersion") == "1"
          and dockerrun["Ports"][0]["ContainerPort"] == 8080, "JSON parses: Dockerrun.aws.json.in (v1, port 8080)")
except (ValueError, KeyError, IndexError) as e:
    check(False, "JSON parses: Dockerrun.aws.json.in", str(e))

# --- variable names: every PARLEY_* in deploy/ is an option; every option is in the
# Beanstalk properties, the Kubernetes ConfigMap/Secret and docs/OPERATIONS.md ---
known = set(options) | ANNOUNCED | {"PARLEY_BATCH_MS"}
for p in sorted(glob.glob(os.path.join(deploy, "**", "*"), recursive=True, include_hidden=True)):
    if not os.path.isfile(p):
        continue
    with open(p, errors="replace") as f:
        names = set(re.findall(r"\bPARLEY_[A-Z0-9_]*[A-Z0-9]\b", f.read()))
    unknown = sorted(names - known)
    if names:
        check(not unknown, f"every PARLEY_* variable is an option of parleyd: {rel(p)}", ", ".join(unknown))


def text(path):
    with open(path) as f:
        return f.read()


for where, paths in [
    ("Beanstalk's environment properties", [os.path.join(eb, ".ebextensions", "01-environment.config")]),
    ("Kubernetes' ConfigMap and Secret", [os.path.join(deploy, "kubernetes", "configmap.yaml"),
                                         os.path.join(deploy, "kubernetes", "secret.example.yaml")]),
    ("docs/OPERATIONS.md", [os.path.join(top, "docs", "OPERATIONS.md")]),
]:
    body = "".join(text(p) for p in paths if os.path.exists(p))
    missing = sorted(v for v in options if not re.search(r"\b" + v + r"\b", body))
    check(not missing, f"every option of parleyd --help is in {where}",
          "missing " + ", ".join(missing) + " (add it there)")


def env_value(s):
    """A compose value: ${X:-default} gives the default."""
    s = str(s)
    m = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", s)
    return m.group(1) if m else s


def seconds(s):
    m = re.fullmatch(r"(\d+)(s|m)?", str(s))
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else -1


# --- Dockerfile ---
dockerfile = text(os.path.join(deploy, "docker", "Dockerfile"))
steps = text(os.path.join(deploy, "docker", "steps.sh"))
uid = re.search(r"^USER_ID=(\d+)", steps, re.M).group(1)
check(re.search(r"^FROM debian:12\S* AS build$", dockerfile, re.M) is not None
      and len(re.findall(r"^FROM debian:12", dockerfile, re.M)) == 2, "Dockerfile: two stages on Debian 12")
user = re.search(r"^USER (\S+)", dockerfile, re.M)
check(user is not None and user.group(1) == f"{uid}:{uid}", "Dockerfile: USER is steps.sh's numeric non-root uid",
      user.group(1) if user else "no USER")
check(re.search(r"^HEALTHCHECK .*\n?.*parley-healthcheck\", \"/readyz\"", dockerfile, re.M) is not None,
      "Dockerfile: HEALTHCHECK runs parley-healthcheck /readyz")
commands = set(re.findall(r"^  ([a-z-]+)\)", steps, re.M))
used = set(re.findall(r"steps\.sh ([a-z-]+)", "\n".join(l for l in dockerfile.splitlines() if l.startswith("RUN"))))
check(used and used <= commands, "Dockerfile: every RUN is a command of steps.sh", ", ".join(sorted(used - commands)))
listen_port = re.search(r"PARLEY_LISTEN=\S*:(\d+)", dockerfile).group(1)
check(re.search(rf"^EXPOSE {listen_port}$", dockerfile, re.M) is not None, "Dockerfile: EXPOSE is PARLEY_LISTEN's port")

# --- docker compose ---
compose = docs.get("deploy/compose/docker-compose.yml", [{}])[0]
services = compose.get("services", {})
check({"redis", "pg-primary", "pg-replica", "node1", "node2", "node3", "haproxy"} <= set(services),
      "compose: Redis, PostgreSQL primary and replica, three nodes, HAProxy")
for n in ("node1", "node2", "node3"):
    s = services.get(n, {})
    env = {k: env_value(v) for k, v in s.get("environment", {}).items()}
    need = int(env.get("PARLEY_DRAIN_DELAY_S", default("PARLEY_DRAIN_DELAY_S"))) + \
        int(env.get("PARLEY_DRAIN_SECONDS", default("PARLEY_DRAIN_SECONDS"))) + FLUSH_S
    check(seconds(s.get("stop_grace_period", "10s")) >= need,
          f"compose: {n}'s stop_grace_period covers the drain ({need} s)", str(s.get("stop_grace_period")))
    check(all(k in env for k in ("PARLEY_DB_URL", "PARLEY_DB_REPLICA_URL", "PARLEY_REDIS_URL", "PARLEY_JWT_SECRET")),
          f"compose: {n} runs in cluster mode with a shared secret")
for s in services.values():
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./"):
            check(os.path.exists(os.path.join(deploy, "compose", src)), f"compose: mounted file exists: {src}")
hacfg = text(os.path.join(deploy, "compose", "haproxy.cfg"))
servers = re.findall(r"^\s+server (\S+) (\S+):(\d+)", hacfg, re.M)
check(sorted(s[1] for s in servers) == ["node1", "node2", "node3"]
      and all(s[2] == listen_port for s in servers), "compose: haproxy.cfg's servers are the three nodes' port")
check("option httpchk GET /readyz" in hacfg and "timeout tunnel" in hacfg, "compose: HAProxy checks /readyz, has a tunnel timeout")

# --- Elastic Beanstalk ---
ebopts = {}
for name in sorted(glob.glob(os.path.join(eb, ".ebextensions", "*.config"))):
    for d in docs.get(rel(name), []):
        for ns, vals in (d.get("option_settings") or {}).items():
            ebopts.setdefault(ns, {}).update(vals or {})
process = ebopts.get("aws:elasticbeanstalk:environment:process:default", {})
ebenv = ebopts.get("aws:elasticbeanstalk:application:environment", {})
check(process.get("HealthCheckPath") == "/readyz", "Beanstalk: the load balancer's health check is /readyz")
heartbeat = int(ebenv.get("PARLEY_HEARTBEAT_MS", default("PARLEY_HEARTBEAT_MS"))) / 1000
idle = int(ebopts.get("aws:elbv2:loadbalancer", {}).get("IdleTimeout", 60))
check(idle >= 2 * heartbeat, f"Beanstalk: the ALB's idle timeout ({idle} s) exceeds two heartbeats")
check(int(process.get("DeregistrationDelay", 300)) > 0, "Beanstalk: connection draining (DeregistrationDelay)")
check(ebopts.get("aws:elasticbeanstalk:command", {}).get("DeploymentPolicy", "").startswith("Rolling"),
      "Beanstalk: rolling deployments")
check({"UpperThreshold", "LowerThreshold", "MeasureName"} <= set(ebopts.get("aws:autoscaling:trigger", {})),
      "Beanstalk: scaling triggers")
drain = int(ebenv.get("PARLEY_DRAIN_DELAY_S")) + int(ebenv.get("PARLEY_DRAIN_SECONDS"))
check(drain + 3 <= 10, f"Beanstalk: the drain ({drain} s + flush) fits Docker's 10 s stop")
check(ebenv.get("PARLEY_LISTEN", "").endswith(":" + str(dockerrun["Ports"][0]["ContainerPort"])),
      "Beanstalk: PARLEY_LISTEN is the container port of Dockerrun.aws.json")

# --- Kubernetes ---
k8s = os.path.join(deploy, "kubernetes")
kinds = {}
for p in glob.glob(os.path.join(k8s, "*.yaml")):
    for d in docs.get(rel(p), []):
        if "kind" in d:
            kinds.setdefault(d["kind"], d)
for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"):
    check(k in kinds, f"Kubernetes: a {k}")
kust = docs.get("deploy/kubernetes/kustomization.yaml", [{}])[0]
check(all(os.path.exists(os.path.join(k8s, r)) for r in kust.get("resources", [])), "Kubernetes: kustomization's resources exist")
dep = kinds.get("Deployment", {})
pod = dep.get("spec", {}).get("template", {})
labels = pod.get("metadata", {}).get("labels", {})
c = (pod.get("spec", {}).get("containers") or [{}])[0]
cm = kinds.get("ConfigMap", {}).get("data", {})


def probe(name):
    return (c.get(name) or {}).get("httpGet", {})


ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check(str(ports.get("http")) == cm.get("PARLEY_LISTEN", "").rsplit(":", 1)[-1], "Kubernetes: the container port is PARLEY_LISTEN's")
check(probe("readinessProbe").get("path") == "/readyz" and probe("readinessProbe").get("port") == "http",
      "Kubernetes: readiness on /readyz")
check(probe("livenessProbe").get("path") == "/healthz", "Kubernetes: liveness on /healthz")
pre = (c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or [])
pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else -1
grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
need = pre_s + int(cm.get("PARLEY_DRAIN_DELAY_S", default("PARLEY_DRAIN_DELAY_S"))) + \
    int(cm.get("PARLEY_DRAIN_SECONDS", default("PARLEY_DRAIN_SECONDS"))) + FLUSH_S
check(pre_s >= 0 and grace >= need,
      f"Kubernetes: terminationGracePeriodSeconds ({grace}) covers preStop + drain + flush ({need})")
sc = pod.get("spec", {}).get("securityContext", {})
check(sc.get("runAsNonRoot") is True and str(sc.get("runAsUser")) == uid, "Kubernetes: runs as the image's non-root uid")
check(c.get("image", "").split(":")[0] == (kust.get("images") or [{}])[0].get("name"), "Kubernetes: kustomization sets the image")
for k in ("Service", "PodDisruptionBudget"):
    spec = kinds.get(k, {}).get("spec", {})
    sel = spec.get("selector", {})
    sel = sel.get("matchLabels", sel)
    check(sel and all(labels.get(a) == b for a, b in sel.items()), f"Kubernetes: the {k} selects the pods")
hpa = kinds.get("HorizontalPodAutoscaler", {}).get("spec", {})
check(hpa.get("scaleTargetRef", {}).get("name") == dep.get("metadata", {}).get("name")
      and hpa.get("minReplicas", 0) >= 2, "Kubernetes: the HPA scales the Deployment, at least 2 pods")
check("replicas" not in dep.get("spec", {}), "Kubernetes: the HPA alone owns the replica count")
check(str(kinds.get("Service", {}).get("spec", {}).get("ports", [{}])[0].get("targetPort")) in ports,
      "Kubernetes: the Service targets the container port")

sys.exit(1 if failed else 0)
