# The distributed topology in docker-compose.yml (as `docker-compose config` resolves it):
# PostgreSQL with a health check and a named volume, the API processes on it, gateways with no
# volume and no database, nginx in front, and no file or volume shared between services.
import sys, yaml
config = yaml.safe_load(sys.stdin)
services, named = config["services"], set(config.get("volumes") or {})
def sources(service):
    for v in service.get("volumes") or []:
        yield v.split(":")[0] if isinstance(v, str) else v.get("source")
def env(service):
    e = service.get("environment") or {}
    return e if isinstance(e, dict) else dict(x.split("=", 1) for x in e)
problems = []
pg = services.get("postgres", {})
if not str(pg.get("image", "")).startswith("postgres:"): problems.append("no postgres service on the official image")
if "healthcheck" not in pg: problems.append("postgres has no healthcheck")
if not any(s in named for s in sources(pg)): problems.append("postgres keeps its data on no named volume")
if not env(services["api"]).get("DATABASE_URL", "").startswith("postgres://"): problems.append("api is not on PostgreSQL")
for name in ("api", "gateway"):
    if list(sources(services[name])): problems.append(f"{name} has a volume")
if any(k.startswith("DATABASE") for k in env(services["gateway"])): problems.append("gateway has database settings")
if "nginx" not in services: problems.append("no nginx in front")
owner = {}
for name, service in services.items():
    for s in sources(service):
        if s in owner: problems.append(f"{s} is shared by {owner[s]} and {name}")
        owner[s] = name
if problems:
    sys.exit("docker-compose.yml: " + "; ".join(problems))
