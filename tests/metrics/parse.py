"""Parse Prometheus/OpenMetrics text with the official Python client's parser and print
every sample as JSON ({"name{k=\"v\",...}": value}). The text is read from stdin, or
fetched from URL with a bearer TOKEN, trusting CA: parse.py [URL TOKEN CA]."""
import json
import ssl
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

if len(sys.argv) == 4:
    url, token, ca = sys.argv[1:]
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    context = ssl.create_default_context(cafile=ca)
    text = urllib.request.urlopen(request, context=context).read().decode()
else:
    text = sys.stdin.read()

samples = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        samples["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(samples))
