"""Shared by the benchmarks: the compose file every generated manifest deployment uses."""

COMPOSE = """\
services:
  app:
    image: busybox:1.36
    init: true
    container_name: ${{DEPLOYMENT_ID}}-app
    command: ["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
    environment:
      GREETING: "${{GREETING:-hello {i}}}"
    volumes:
      - ./data/www:/www
    networks: [default, impreza-proxy]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1/"]
      interval: 5s
networks:
  impreza-proxy:
    external: true
"""
