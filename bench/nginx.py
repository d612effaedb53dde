"""nginx as the reference reverse proxy: its own config in a temp dir, nothing system-wide."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CONFIG = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  client_max_body_size 32m;
  keepalive_requests 1000000;
  map $http_authorization $key_ok {{ default 0; "Bearer {key}" 1; }}
  upstream backend {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /health {{ return 200 "{{}}"; }}
    location / {{
      if ($key_ok = 0) {{ return 401; }}
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {secret}";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"""


def write_nginx_config(prefix: Path, port: int, backend_url: str, secret: str, key: str) -> Path:
    """Write nginx.conf under PREFIX for a proxy on PORT to BACKEND_URL; returns its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    # as root, nginx would switch its worker to `nobody`, who cannot write the temp dirs
    user = "user root;\n" if os.geteuid() == 0 else ""
    text = CONFIG.format(user=user, prefix=prefix, port=port, key=key, secret=secret,
                         upstream=backend_url.removeprefix("http://"))
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_argv(prefix: Path, conf: Path) -> list[str]:
    """The command that runs nginx in the foreground with CONF."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
