#!/usr/bin/python3
"""test-deploy.py [BUILD_DIR] - static checks of deploy/: Dockerfile, compose.yaml, k8s/.

Every file parses as YAML; scripts/gen-deploy.py --check passes; every service in services/*/
(plus 02, 03, 04) has its compose service and k8s manifests; ports and probe paths match the
service table; the Dockerfile's runtime stage is a separate slim stage that installs only
runtime packages (with BUILD_DIR: every shared library the built binaries need is installed);
images and tags agree everywhere. hadolint and kubeconform run when installed, else are skipped.
Prints `N passed, N failed`; exit status 0 iff nothing failed. Python stdlib + python3-yaml.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
PY = sys.executable or "/usr/bin/python3"

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAIL: {name}{': ' + detail if detail else ''}")
    return ok


def skip(name, why):
    print(f"skip: {name} ({why})")


def load_gen():
    spec = importlib.util.spec_from_file_location("gen_deploy",
                                                  os.path.join(ROOT, "scripts", "gen-deploy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- generator and YAML parsing
gen = load_gen()
table, source = gen.load_table(None)
print(f"-- service table: {source} ({len(table)} services)")
check("service table has 51 services with ports (02..52)",
      sorted(table) == [f"{n:02d}" for n in range(2, 53)], f"got {sorted(table)}")

r = subprocess.run([PY, os.path.join(ROOT, "scripts", "gen-deploy.py"), "--check"],
                   capture_output=True, text=True)
check("gen-deploy.py --check: committed files match the templates", r.returncode == 0,
      (r.stdout + r.stderr).strip())

r = subprocess.run([PY, os.path.join(ROOT, "scripts", "gen-deploy.py"), "--check"],
                   capture_output=True, text=True, env=dict(os.environ, GRAVITY_SERVICES_MD="-"))
check("gen-deploy.py --check from the committed snapshot deploy/services.tsv alone",
      r.returncode == 0, (r.stdout + r.stderr).strip())

yaml_files = [os.path.join(DEPLOY, "compose.yaml")]
kdir = os.path.join(DEPLOY, "k8s")
yaml_files += sorted(os.path.join(kdir, f) for f in os.listdir(kdir) if f.endswith(".yaml"))
docs = {}
for path in yaml_files:
    rel = os.path.relpath(path, ROOT)
    try:
        docs[rel] = [d for d in yaml.safe_load_all(read(path)) if d is not None]
        check(f"{rel} parses as YAML", len(docs[rel]) > 0, "empty")
    except yaml.YAMLError as e:
        check(f"{rel} parses as YAML", False, str(e).replace("\n", " "))
        docs[rel] = []

# ---------------------------------------------------------------- which services
existing = []
for d in sorted(os.listdir(os.path.join(ROOT, "services"))):
    if os.path.isfile(os.path.join(ROOT, "services", d, "service.c")):
        existing.append(d)
wanted = sorted(set(f"{nn}-{table[nn]['name']}" for nn in gen.ALWAYS) | set(existing))
print(f"-- services: {' '.join(wanted)}")
for d in existing:
    # the service descriptor's field (a line of its own), not other `.port = …` assignments
    m = re.search(r"^\s*\.port\s*=\s*(\d+),", read(os.path.join(ROOT, "services", d, "service.c")),
                  re.M)
    nn = d[:2]
    check(f"services/{d}/service.c port matches SERVICES.md",
          m is not None and nn in table and int(m.group(1)) == table[nn]["port"],
          f"service.c {m.group(1) if m else '?'} vs table {table.get(nn, {}).get('port')}")

# ---------------------------------------------------------------- compose
compose = (docs.get("deploy/compose.yaml") or [{}])[0]
cs = compose.get("services", {}) if isinstance(compose, dict) else {}
for infra in ("postgres", "redis", "nats"):
    check(f"compose has {infra}", infra in cs)
nats_cmd = " ".join(map(str, cs.get("nats", {}).get("command", [])))
check("compose nats runs with JetStream (-js)", re.search(r"(^| )-js( |$)", nats_cmd) is not None,
      nats_cmd)
init_sql = read(os.path.join(DEPLOY, "postgres", "init.sql"))
pg_vols = " ".join(cs.get("postgres", {}).get("volumes", []))
check("compose postgres runs postgres/init.sql", "./postgres/init.sql:/docker-entrypoint-initdb.d/"
      in pg_vols, pg_vols)

auth, disc = table["05"], table["02"]
jwks = f"http://{auth['name']}:{auth['port']}/api/v1/auth/jwks"
gravity_images = set()
databases = set()
for sid in wanted:
    nn, name = sid[:2], sid[3:]
    port = table[nn]["port"]
    s = cs.get(name)
    if not check(f"compose has service {name} ({sid})", isinstance(s, dict)):
        continue
    env = {k: str(v) for k, v in (s.get("environment") or {}).items()}
    gravity_images.add(s.get("image"))
    check(f"compose {name}: command runs /opt/gravity/bin/{sid}",
          s.get("command") == [f"/opt/gravity/bin/{sid}"], str(s.get("command")))
    check(f"compose {name}: PORT={port}, HOST=0.0.0.0",
          env.get("PORT") == str(port) and env.get("HOST") == "0.0.0.0", str(env))
    m = re.fullmatch(r"postgres://gravity@postgres:5432/(\w+)", env.get("DATABASE_URL", ""))
    ok = m is not None and m.group(1) not in databases and \
        f"CREATE DATABASE {m.group(1)};" in init_sql
    check(f"compose {name}: DATABASE_URL is its own database, created by init.sql (no password)",
          ok, env.get("DATABASE_URL", "unset"))
    if m:
        databases.add(m.group(1))
    check(f"compose {name}: REDIS_URL, EVENT_BUS=nats, NATS_URL, DISCOVERY_URL, JWKS_URL",
          env.get("REDIS_URL") == "redis://redis:6379/0" and env.get("EVENT_BUS") == "nats"
          and env.get("NATS_URL") == "nats://nats:4222"
          and env.get("DISCOVERY_URL") == f"http://{disc['name']}:{disc['port']}"
          and env.get("JWKS_URL") == jwks, str(env))
    check(f"compose {name}: DISCOVERY_ADDRESS is its DNS name",
          env.get("DISCOVERY_ADDRESS") == name, env.get("DISCOVERY_ADDRESS", "unset"))
    test = s.get("healthcheck", {}).get("test", [])
    check(f"compose {name}: health check GETs /ready on :{port}",
          f"http://127.0.0.1:{port}/ready" in test and "curl" in test, str(test))
    deps = s.get("depends_on", {})
    check(f"compose {name}: waits for healthy postgres, redis, nats",
          all(deps.get(d, {}).get("condition") == "service_healthy"
              for d in ("postgres", "redis", "nats")), str(deps))
    if nn == "03":
        check("compose api-gateway publishes :8000", f"{port}:{port}" in
              [str(p) for p in s.get("ports", [])] and port == 8000, str(s.get("ports")))
    else:
        check(f"compose {name}: publishes no host port", "ports" not in s)
check("compose: every gravity service uses one image", len(gravity_images) == 1,
      str(gravity_images))
extra = set(cs) - {"postgres", "redis", "nats"} - {w[3:] for w in wanted}
check("compose: no service without a source", not extra, str(extra))


def cycle(graph):
    state = {}

    def visit(n):
        if state.get(n) == 1:
            return True
        if state.get(n) == 2:
            return False
        state[n] = 1
        if any(visit(m) for m in graph.get(n, [])):
            return True
        state[n] = 2
        return False
    return any(visit(n) for n in graph)


check("compose: depends_on has no cycle",
      not cycle({k: list((v or {}).get("depends_on", {}) or {}) for k, v in cs.items()}))

# ---------------------------------------------------------------- k8s
k8s_images = set()
for sid in wanted:
    nn, name = sid[:2], sid[3:]
    port = table[nn]["port"]
    rel = f"deploy/k8s/{sid}.yaml"
    if not check(f"{rel} exists", rel in docs):
        continue
    by_kind = {}
    for d in docs[rel]:
        by_kind.setdefault(d.get("kind"), []).append(d)
    check(f"{rel}: one ConfigMap, Deployment, Service, HorizontalPodAutoscaler",
          sorted(by_kind) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]
          and all(len(v) == 1 for v in by_kind.values()), str({k: len(v) for k, v in
                                                                by_kind.items()}))
    if sorted(by_kind) != ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]:
        continue
    cm, dep = by_kind["ConfigMap"][0], by_kind["Deployment"][0]
    svc, hpa = by_kind["Service"][0], by_kind["HorizontalPodAutoscaler"][0]
    data = cm.get("data", {})
    check(f"{rel}: ConfigMap env (PORT={port}, HOST, DATABASE_URL, REDIS_URL, EVENT_BUS=nats, "
          "NATS_URL, DISCOVERY_URL, JWKS_URL)",
          data.get("PORT") == str(port) and data.get("HOST") == "0.0.0.0"
          and data.get("DATABASE_URL", "").startswith("postgres://")
          and data.get("REDIS_URL", "").startswith("redis://") and data.get("EVENT_BUS") == "nats"
          and data.get("NATS_URL", "").startswith("nats://")
          and data.get("DISCOVERY_URL") == f"http://{disc['name']}:{disc['port']}"
          and data.get("JWKS_URL") == jwks, str(data))
    check(f"{rel}: ConfigMap holds no secret (no password in URLs, no *SECRET*/*PASSWORD*/*TOKEN*)",
          all(isinstance(v, str) for v in data.values())
          and not any(re.search(r"SECRET|PASSWORD|TOKEN", k) for k in data)
          and not any(re.search(r"://[^/@]*:[^/@]*@", v) for v in data.values()), str(data))
    check(f"{rel}: Deployment apps/v1 named {name}",
          dep.get("apiVersion") == "apps/v1" and dep["metadata"]["name"] == name)
    pod = dep["spec"]["template"]
    sel = dep["spec"]["selector"]["matchLabels"]
    check(f"{rel}: Deployment selector matches the pod labels",
          all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()))
    cont = pod["spec"]["containers"]
    c = cont[0] if len(cont) == 1 else {}
    k8s_images.add(c.get("image"))
    check(f"{rel}: container runs /opt/gravity/bin/{sid}",
          c.get("command") == [f"/opt/gravity/bin/{sid}"], str(c.get("command")))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    check(f"{rel}: containerPort {port}", ports.get("http") == port, str(ports))
    rp = c.get("readinessProbe", {}).get("httpGet", {})
    lp = c.get("livenessProbe", {}).get("httpGet", {})
    check(f"{rel}: readiness probe GET /ready, liveness GET /health on the http port",
          rp.get("path") == "/ready" and lp.get("path") == "/health"
          and rp.get("port") in ("http", port) and lp.get("port") in ("http", port),
          f"{rp} {lp}")
    res = c.get("resources", {})
    check(f"{rel}: resources requests and limits for cpu and memory",
          all(k in res.get(t, {}) for t in ("requests", "limits") for k in ("cpu", "memory")),
          str(res))
    refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
    check(f"{rel}: container takes its env from the ConfigMap", cm["metadata"]["name"] in refs,
          str(refs))
    da = [e for e in c.get("env", []) if e.get("name") == "DISCOVERY_ADDRESS"]
    check(f"{rel}: DISCOVERY_ADDRESS is the pod IP (downward API)",
          len(da) == 1 and da[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "status.podIP", str(da))
    psc, csc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
    check(f"{rel}: runs as non-root, no privilege escalation",
          psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0
          and csc.get("allowPrivilegeEscalation") is False, f"{psc} {csc}")
    sp = svc.get("spec", {})
    sports = sp.get("ports", [])
    check(f"{rel}: Service {name} port {port} -> http, selects the pods",
          svc["metadata"]["name"] == name and len(sports) == 1 and sports[0].get("port") == port
          and sports[0].get("targetPort") in ("http", port)
          and all(pod["metadata"]["labels"].get(k) == v for k, v in sp.get("selector", {}).items())
          and sp.get("selector"), str(sp))
    hs = hpa.get("spec", {})
    check(f"{rel}: HPA autoscaling/v2 scales this Deployment on cpu",
          hpa.get("apiVersion") == "autoscaling/v2"
          and hs.get("scaleTargetRef") == {"apiVersion": "apps/v1", "kind": "Deployment",
                                           "name": name}
          and 1 <= hs.get("minReplicas", 0) <= hs.get("maxReplicas", 0)
          and any(m.get("resource", {}).get("name") == "cpu" for m in hs.get("metrics", [])),
          str(hs))
extra = {f[:-5] for f in os.listdir(kdir) if f.endswith(".yaml")} - set(wanted) - {"kustomization"}
check("k8s: no manifest without a source", not extra, str(extra))
kust = (docs.get("deploy/k8s/kustomization.yaml") or [{}])[0]
check("k8s/kustomization.yaml lists every manifest",
      sorted(kust.get("resources", [])) == sorted(f"{w}.yaml" for w in wanted),
      str(kust.get("resources")))

# ---------------------------------------------------------------- images and tags
check("k8s: every Deployment uses one image", len(k8s_images) == 1, str(k8s_images))
k8s_image = next(iter(k8s_images)) if len(k8s_images) == 1 else ""
comp_image = next(iter(gravity_images)) if len(gravity_images) == 1 else ""
m = re.fullmatch(r"([a-z0-9./-]+):\$\{GRAVITY_TAG:-([\w.-]+)\}", comp_image or "")
check("compose and k8s use the same image and default tag, not :latest",
      m is not None and f"{m.group(1)}:{m.group(2)}" == k8s_image == gen.IMAGE
      and not k8s_image.endswith(":latest"), f"{comp_image} vs {k8s_image}")
kv = (kust.get("labels") or [{}])[0].get("pairs", {}).get("app.kubernetes.io/version")
check("kustomization version label is the image tag", kv == gen.IMAGE_TAG, str(kv))
dockerfile = read(os.path.join(DEPLOY, "Dockerfile"))
check("Dockerfile usage line builds the same image tag", f"-t {gen.IMAGE} " in dockerfile)

# ---------------------------------------------------------------- Dockerfile
stages = []  # [base, alias, [lines]]
for raw in re.sub(r"\\\n", " ", dockerfile).splitlines():
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    m = re.match(r"(?i)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line)
    if m:
        stages.append([m.group(1), (m.group(2) or "").lower(), []])
    elif stages:
        stages[-1][2].append(line)
aliases = [s[1] for s in stages]
check("Dockerfile: stages build (debian:12) and runtime (debian:12-slim)",
      ["debian:12", "build"] in [s[:2] for s in stages]
      and ["debian:12-slim", "runtime"] in [s[:2] for s in stages], str([s[:2] for s in stages]))
final = stages[-1] if stages else ["", "", []]
check("Dockerfile: the final stage is runtime, not build", final[1] == "runtime"
      and final[0] != "build" and final[0] != stages[0][0], str(final[:2]))


def apt_pkgs(lines):
    pk = []
    for line in lines:
        for m in re.finditer(r"apt-get install ((?:[^&|;]*))", line):
            pk += [w for w in m.group(1).split() if not w.startswith("-")]
    return pk


build_stage = next((s for s in stages if s[1] == "build"), ["", "", []])
build_pkgs, run_pkgs = apt_pkgs(build_stage[2]), apt_pkgs(final[2])
deps_sh = read(os.path.join(ROOT, "scripts", "deps.sh"))
m = re.search(r"PKGS=\((.*?)\)", deps_sh, re.S)
deps_pkgs = set(m.group(1).split()) if m else set()
check("Dockerfile: build stage installs only packages from scripts/deps.sh",
      build_pkgs and set(build_pkgs) <= deps_pkgs, str(set(build_pkgs) - deps_pkgs))
mk = read(os.path.join(ROOT, "Makefile"))
m = re.search(r"^LIBS\s*:=(.*?)(?:\n(?!\s))", mk, re.S | re.M)
libs = re.findall(r"-l(\w+)", m.group(1)) if m else []
dev_for = {"microhttpd": "libmicrohttpd-dev", "jansson": "libjansson-dev",
           "sqlite3": "libsqlite3-dev", "pq": "libpq-dev", "nats": "libnats-dev",
           "curl": "libcurl4-openssl-dev", "ssl": "libssl-dev", "crypto": "libssl-dev",
           "argon2": "libargon2-dev", "oath": "liboath-dev", "crypt": "libcrypt-dev",
           "hiredis": "libhiredis-dev", "m": "build-essential"}
missing = [lib for lib in libs if dev_for.get(lib, f"?{lib}") not in build_pkgs]
check("Dockerfile: build stage has a -dev package for every -l in the Makefile's LIBS",
      libs and not missing, f"libs {libs}, missing {missing}")
check("Dockerfile: runtime stage installs no -dev package nor compiler",
      run_pkgs and not [p for p in run_pkgs if p.endswith("-dev") or p in
                        ("build-essential", "gcc", "clang", "make", "pkg-config")], str(run_pkgs))
check("Dockerfile: runtime copies the binaries from the build stage",
      any(re.match(r"COPY --from=build /out/bin/ /opt/gravity/bin/", ln) for ln in final[2]))
users = [ln.split()[1] for ln in final[2] if ln.upper().startswith("USER ")]
check("Dockerfile: runtime runs as a non-root user",
      users and users[-1].split(":")[0] not in ("root", "0"), str(users))
check("Dockerfile: runtime sets HOST=0.0.0.0",
      any(ln.startswith("ENV ") and re.search(r"\bHOST=0\.0\.0\.0\b", ln) for ln in final[2]))
build_cmd = " ".join(build_stage[2])
check("Dockerfile: build stage builds services, tools and gravity",
      re.search(r"make .*\bservices\b.*\btools\b.*/bin/gravity", build_cmd) is not None)
ign = os.path.join(DEPLOY, "Dockerfile.dockerignore")
check("deploy/Dockerfile.dockerignore keeps build/, data/ and .git out of the context",
      os.path.isfile(ign) and {"build", "data", ".git"} <= set(read(ign).split()))

# With a build: every shared library the binaries load comes from a runtime package.
bdir = sys.argv[1] if len(sys.argv) > 1 else ""
bins = []
if bdir and os.path.isdir(os.path.join(bdir, "bin")):
    bins = [os.path.join(bdir, "bin", b) for b in sorted(os.listdir(os.path.join(bdir, "bin")))]
if bins and shutil.which("readelf") and shutil.which("dpkg"):
    needed = set()
    for b in bins:
        out = subprocess.run(["readelf", "-d", b], capture_output=True, text=True).stdout
        needed |= set(re.findall(r"\(NEEDED\).*\[(.+?)\]", out))
    bad = []
    for lib in sorted(needed):
        pkg = None
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib",
                  "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"):
            r = subprocess.run(["dpkg", "-S", os.path.join(d, lib)], capture_output=True,
                               text=True)
            if r.returncode == 0:
                pkg = r.stdout.split(":")[0]
                break
        if pkg not in set(run_pkgs) | {"libc6", "libgcc-s1"}:  # in debian:12-slim already
            bad.append(f"{lib} ({pkg})")
    check(f"runtime packages provide every NEEDED library of {len(bins)} binaries in {bdir}",
          not bad, ", ".join(bad))
else:
    skip("runtime packages vs NEEDED libraries", "no BUILD_DIR/bin given (or no readelf/dpkg)")

# ---------------------------------------------------------------- external linters
# The Compose file model: `docker compose config` (v2), else Debian's docker-compose 1.29 (which
# predates the top-level `name:`, so it reads a copy without that line). No daemon needed.
compose_v2 = shutil.which("docker") is not None and subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode == 0
if compose_v2:
    r = subprocess.run(["docker", "compose", "-f", os.path.join(DEPLOY, "compose.yaml"), "config",
                        "-q"], capture_output=True, text=True)
    check("docker compose config accepts deploy/compose.yaml", r.returncode == 0,
          (r.stdout + r.stderr).strip())
elif shutil.which("docker-compose"):
    with tempfile.TemporaryDirectory() as tmpdir:
        copy = os.path.join(tmpdir, "compose.yaml")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(re.sub(r"(?m)^name:.*\n", "", read(os.path.join(DEPLOY, "compose.yaml"))))
        r = subprocess.run(["docker-compose", "-f", copy, "--project-directory", DEPLOY, "config",
                            "-q"], capture_output=True, text=True)
    check("docker-compose config accepts deploy/compose.yaml", r.returncode == 0,
          (r.stdout + r.stderr).strip())
else:
    skip("docker compose config", "neither `docker compose` nor docker-compose installed")
if shutil.which("hadolint"):
    r = subprocess.run(["hadolint", os.path.join(DEPLOY, "Dockerfile")], capture_output=True,
                       text=True)
    check("hadolint deploy/Dockerfile", r.returncode == 0, (r.stdout + r.stderr).strip())
else:
    skip("hadolint", "not installed")
if shutil.which("kubeconform"):
    r = subprocess.run(["kubeconform", "-strict", "-summary", "-ignore-filename-pattern",
                        "kustomization", kdir], capture_output=True, text=True)
    check("kubeconform deploy/k8s", r.returncode == 0, (r.stdout + r.stderr).strip())
else:
    skip("kubeconform", "not installed")

print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
