#!/usr/bin/python3
"""gen-deploy.py - generates the deployment files from deploy/templates/ and the service table.

    python3 scripts/gen-deploy.py            write deploy/compose.yaml, deploy/postgres/init.sql,
                                             deploy/k8s/<NN-name>.yaml, deploy/k8s/kustomization.yaml
                                             and deploy/services.tsv
    python3 scripts/gen-deploy.py --check    write nothing; exit 1 when a committed file differs
                                             from what would be generated (or is missing/extra)

The service table (number, name, port, prefixes) comes from the section headings of SERVICES.md
(`### NN name · :PORT · prefixes`), looked up as --services-md, $GRAVITY_SERVICES_MD,
/work/shared/SERVICES.md; when none exists (or GRAVITY_SERVICES_MD=-) the committed snapshot
deploy/services.tsv is used, so --check works on any checkout. Files are generated for the services that exist in
services/NN-name/service.c plus ALWAYS (02, 03, 04: the infrastructure the others need).
Python 3 standard library only.
"""
import argparse
import os
import re
import string
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
TEMPLATES = os.path.join(DEPLOY, "templates")
SNAPSHOT = os.path.join(DEPLOY, "services.tsv")

IMAGE_NAME = "gravity"
IMAGE_TAG = "0.1.0"
IMAGE = f"{IMAGE_NAME}:{IMAGE_TAG}"
COMPOSE_IMAGE = f"{IMAGE_NAME}:${{GRAVITY_TAG:-{IMAGE_TAG}}}"

ALWAYS = ("02", "03", "04")  # service-discovery, api-gateway, config-service
GATEWAY = "03"
DISCOVERY = "02"
AUTH = "05"

HEADING = re.compile(r"^### (\d\d) ([a-z0-9]+(?:-[a-z0-9]+)*) · (?::(\d{2,5})|no port) · (.+)$")

DEFAULT_SIZING = {
    "cpu_request": "100m", "memory_request": "64Mi",
    "cpu_limit": "1", "memory_limit": "256Mi",
    "min_replicas": 2, "max_replicas": 10, "cpu_target": 70,
}
SIZING = {  # per-service overrides
    "02": {"max_replicas": 3},
    "03": {"cpu_request": "250m", "memory_request": "128Mi", "cpu_limit": "2",
           "memory_limit": "512Mi", "min_replicas": 2, "max_replicas": 20, "cpu_target": 60},
    "05": {"cpu_request": "250m", "memory_limit": "512Mi"},  # argon2 hashing
}


def die(msg):
    print(f"gen-deploy: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_services_md(text):
    """Returns {nn: {nn, name, port, prefixes}} for every heading with a port."""
    table = {}
    for line in text.splitlines():
        m = HEADING.match(line.strip())
        if not m or not m.group(3):
            continue
        nn, name, port, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        prefixes = re.findall(r"`(/api/v1/[^`]*)`", rest)
        if not prefixes or not 1 <= port <= 65535:
            die(f"SERVICES.md: heading for {nn} {name} has no /api/v1 prefix or a bad port")
        table[nn] = {"nn": nn, "name": name, "port": port, "prefixes": prefixes}
    return table


def load_table(services_md):
    env = os.environ.get("GRAVITY_SERVICES_MD", "")
    candidates = [services_md] if services_md else []
    if env != "-":  # "-": the committed snapshot only
        candidates += [env, "/work/shared/SERVICES.md"]
    for path in candidates:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                table = parse_services_md(f.read())
            if len(table) < 50:
                die(f"{path}: only {len(table)} service headings parsed")
            return table, path
        if path == services_md:
            die(f"{path}: not found")
    if not os.path.isfile(SNAPSHOT):
        die("no SERVICES.md and no deploy/services.tsv snapshot")
    table = {}
    with open(SNAPSHOT, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            nn, name, port, prefixes = line.rstrip("\n").split("\t")
            table[nn] = {"nn": nn, "name": name, "port": int(port), "prefixes": prefixes.split(" ")}
    return table, SNAPSHOT


def existing_services():
    """NN-name of every services/*/service.c."""
    out = []
    sdir = os.path.join(ROOT, "services")
    for d in sorted(os.listdir(sdir)):
        if os.path.isfile(os.path.join(sdir, d, "service.c")):
            out.append(d)
    return out


def selected(table):
    chosen = set(ALWAYS)
    for d in existing_services():
        m = re.match(r"^(\d\d)-(.+)$", d)
        if not m or m.group(1) not in table or table[m.group(1)]["name"] != m.group(2):
            die(f"services/{d}: not in the SERVICES.md table (number and name must match)")
        chosen.add(m.group(1))
    for nn in chosen:
        if nn not in table:
            die(f"service {nn}: missing from the service table")
    return [table[nn] for nn in sorted(chosen)]


def template(name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return string.Template(f.read())


def quote(v):
    """A YAML double-quoted scalar (values are plain ASCII URLs and words)."""
    s = str(v)
    if not re.fullmatch(r"[\x20-\x7e]*", s) or '"' in s or "\\" in s:
        die(f"value {s!r} needs escaping; keep env values plain")
    return f'"{s}"'


def db_name(svc):
    return "gravity_" + svc["name"].replace("-", "_")


def service_env(svc, table, compose):
    """The environment every container gets (ARCHITECTURE.md §1); secrets are not here."""
    auth = table[AUTH]
    disc = table[DISCOVERY]
    env = [
        ("HOST", "0.0.0.0"),
        ("PORT", svc["port"]),
        ("DATABASE_URL", f"postgres://gravity@postgres:5432/{db_name(svc)}"),
        ("REDIS_URL", "redis://redis:6379/0"),
        ("EVENT_BUS", "nats"),
        ("NATS_URL", "nats://nats:4222"),
        ("DISCOVERY_URL", f"http://{disc['name']}:{disc['port']}"),
        ("JWKS_URL", f"http://{auth['name']}:{auth['port']}/api/v1/auth/jwks"),
        ("AUTH_URL", f"http://{auth['name']}:{auth['port']}"),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "info"),
    ]
    if compose:
        # What 02 hands the gateway: the container's DNS name (k8s: the pod IP, set by the
        # Deployment from the downward API, as a ConfigMap cannot).
        env.append(("DISCOVERY_ADDRESS", svc["name"]))
        # k8s takes PGPASSWORD from the <name>-secrets Secret.
        env.append(("PGPASSWORD", "${POSTGRES_PASSWORD:-gravity}"))
    return env


def render_env(env, indent):
    return "\n".join(f"{' ' * indent}{k}: {quote(v)}" for k, v in env)


def render_compose(services, table):
    parts = [template("compose-head.yaml.tmpl").substitute()]
    svc_t = template("compose-service.yaml.tmpl")
    for svc in services:
        deps = ["postgres", "redis", "nats"]
        if svc["nn"] != DISCOVERY:
            deps.append(table[DISCOVERY]["name"])
        if svc["nn"] not in (AUTH, DISCOVERY):  # 05 needs 02; 02 needs nothing (no cycle)
            deps.append(table[AUTH]["name"])
        dep_lines = []
        for d in deps:
            cond = "service_healthy" if d in ("postgres", "redis", "nats") else "service_started"
            dep_lines.append(f"      {d}:\n        condition: {cond}")
        ports = ""
        if svc["nn"] == GATEWAY:  # the only published port: the public door
            ports = f'    ports:\n      - "{svc["port"]}:{svc["port"]}"\n'
        else:
            ports = f'    expose:\n      - "{svc["port"]}"\n'
        parts.append(svc_t.substitute(
            id=f"{svc['nn']}-{svc['name']}", name=svc["name"], port=svc["port"],
            prefixes=", ".join(svc["prefixes"]), image=COMPOSE_IMAGE,
            environment=render_env(service_env(svc, table, True), 6),
            ports=ports, depends_on="\n".join(dep_lines)))
    parts.append(template("compose-tail.yaml.tmpl").substitute())
    return "".join(parts)


def render_k8s(svc, table):
    sizing = dict(DEFAULT_SIZING)
    sizing.update(SIZING.get(svc["nn"], {}))
    return template("k8s-service.yaml.tmpl").substitute(
        id=f"{svc['nn']}-{svc['name']}", name=svc["name"], port=svc["port"],
        prefixes=", ".join(svc["prefixes"]), image=IMAGE,
        configmap=render_env(service_env(svc, table, False), 2), **sizing)


def render_all(table):
    services = selected(table)
    files = {}
    files["compose.yaml"] = render_compose(services, table)
    files["postgres/init.sql"] = template("postgres-init.sql.tmpl").substitute(
        databases="\n".join(f"CREATE DATABASE {db_name(s)};" for s in services))
    for svc in services:
        files[f"k8s/{svc['nn']}-{svc['name']}.yaml"] = render_k8s(svc, table)
    files["k8s/kustomization.yaml"] = template("kustomization.yaml.tmpl").substitute(
        tag=IMAGE_TAG,
        resources="\n".join(f"  - {s['nn']}-{s['name']}.yaml" for s in services))
    snap = ["# GENERATED by scripts/gen-deploy.py: the SERVICES.md table (nn name port prefixes)"]
    for nn in sorted(table):
        t = table[nn]
        snap.append(f"{nn}\t{t['name']}\t{t['port']}\t{' '.join(t['prefixes'])}")
    files["services.tsv"] = "\n".join(snap) + "\n"
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the committed files differ from the generated ones")
    ap.add_argument("--services-md", help="path of SERVICES.md")
    args = ap.parse_args()

    table, source = load_table(args.services_md)
    files = render_all(table)
    # Generated k8s files that no longer have a service are stale.
    kdir = os.path.join(DEPLOY, "k8s")
    stale = []
    if os.path.isdir(kdir):
        for f in sorted(os.listdir(kdir)):
            if f.endswith(".yaml") and f"k8s/{f}" not in files:
                stale.append(f"k8s/{f}")

    if args.check:
        bad = []
        for rel, text in sorted(files.items()):
            path = os.path.join(DEPLOY, rel)
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        bad.append(f"deploy/{rel}: differs")
            except FileNotFoundError:
                bad.append(f"deploy/{rel}: missing")
        bad += [f"deploy/{rel}: not generated any more" for rel in stale]
        for b in bad:
            print(f"gen-deploy --check: {b}", file=sys.stderr)
        if bad:
            print("gen-deploy --check: run `python3 scripts/gen-deploy.py`", file=sys.stderr)
            return 1
        print(f"gen-deploy --check: {len(files)} files up to date (table: {source})")
        return 0

    for rel, text in files.items():
        path = os.path.join(DEPLOY, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    for rel in stale:
        os.remove(os.path.join(DEPLOY, rel))
    print(f"gen-deploy: wrote {len(files)} files, removed {len(stale)} (table: {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
