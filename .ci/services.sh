#!/usr/bin/env bash
# Makes sure the services the tests use answer on 127.0.0.1: RabbitMQ (5672), Redis (6379)
# and PostgreSQL (5432, trust auth, database `test`).
# Starts whichever is down and waits (polling) until it answers.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port name seconds
  local deadline=$((SECONDS + $3))
  until answers "$1"; do
    if ((SECONDS > deadline)); then echo "services: $2 did not answer on port $1 within $3 s" >&2; exit 1; fi
    sleep 0.5
  done
  echo "services: $2 answers on 127.0.0.1:$1"
}

need() {  # command debian-package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "services: installing $2"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

if ! answers 5672; then
  need rabbitmq-server rabbitmq-server
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_for 5672 RabbitMQ 120
# the port opens before the node is fully booted; wait until it serves requests
if command -v rabbitmqctl >/dev/null 2>&1; then
  timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi

if ! answers 6379; then
  need redis-server redis-server
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for 6379 Redis 60

if ! answers 5432; then
  need pg_ctlcluster postgresql
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort | tail -1)" main start || true
fi
wait_for 5432 PostgreSQL 60
