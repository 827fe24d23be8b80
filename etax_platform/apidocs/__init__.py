"""The OpenAPI document of the public JSON API and its reference page (issue 12, item 7).

`make protos` runs grpc-gateway's protoc-gen-openapiv2 over the protos (their
`google.api.http` options and comments) and `document.finish` adds what the generator
cannot know: who may call each operation and its flood guard (the contract's
`etax.common.v1.policy` options), the one error schema (google.rpc.Status with ErrorInfo
and LocalizedMessage) and the HTTP statuses the gateway answers, newline-delimited
streaming, a bilingual title. `page.render` makes the static reference page from the
document. Both land in gen/openapi/ and the gateway serves them (`GET /openapi.json`,
`GET /api/`). `python -m etax_platform.apidocs check` is the CI check: fresh, valid,
every public route in it and no internal one.

Modules: `document` (generating, finishing, checking), `page` (the HTML page).
"""

# The files `make protos` writes into gen/openapi/ and the gateway serves.
DOCUMENT_NAME = "openapi.json"
PAGE_NAME = "api.html"
