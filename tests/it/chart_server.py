"""Serves a directory over HTTP for the integration tests, as a Helm chart
repository is served: static files (index.yaml, chart archives), on every
address. With HTTP_AUTH=user:password in the environment it requires that
basic authentication.

usage: chart_server.py PORT ROOT
"""
import base64
import functools
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        wanted = os.environ.get("HTTP_AUTH")
        given = self.headers.get("Authorization", "")
        if wanted and given != "Basic " + base64.b64encode(wanted.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="charts"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


port, root = int(sys.argv[1]), sys.argv[2]
server = http.server.ThreadingHTTPServer(("0.0.0.0", port), functools.partial(Handler, directory=root))
server.serve_forever()
