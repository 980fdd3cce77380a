#!/bin/bash
# Refuses a deployment whose environment lacks the cluster settings. Several instances
# need cluster mode (PostgreSQL + Redis) and one JWT secret; without them each instance
# would start its own SQLite chat. Set them with `eb setenv` (.ebextensions/01-environment.config).
set -euo pipefail
get_config=${EB_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}
value() { "$get_config" environment -k "$1" 2>/dev/null || true; }
missing=()
for v in PARLEY_JWT_SECRET PARLEY_DB_URL PARLEY_REDIS_URL; do
  [ -n "$(value "$v")" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "parley: the environment lacks ${missing[*]}: set them with eb setenv (deploy/elastic-beanstalk/README.md)" >&2
  exit 1
fi
secret=$(value PARLEY_JWT_SECRET)
if [ ${#secret} -lt 16 ] || [ ${#secret} -gt 256 ]; then
  echo "parley: PARLEY_JWT_SECRET must be 16-256 bytes" >&2
  exit 1
fi
case "$(value PARLEY_DB_URL)" in
  postgresql://* | postgres://*) ;;
  *) echo "parley: PARLEY_DB_URL must be postgresql://user:password@host:port/db" >&2; exit 1 ;;
esac
case "$(value PARLEY_REDIS_URL)" in
  redis://*) ;;
  *) echo "parley: PARLEY_REDIS_URL must be redis://host:port" >&2; exit 1 ;;
esac
echo "parley: cluster settings present"
