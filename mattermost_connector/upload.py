"""Files too large for any queue message, uploaded straight to OpenCTI as Artifacts.

pycti builds the requests: `stix_cyber_observable.create` of the Artifact (hashes, name, MIME
type, marking), then `add_file`, the GraphQL multipart `importPush` that stores the file
under it with its marking. Not `create(files=...)`: on an Artifact that already exists (a
bundle naming it was imported first, an earlier upload failed half-way) the platform's
upsert ignores `files` (upsert-utils.js reads only a single `file`), while importPush stores
the file on a new or an existing element alike. Sent by pycti's requests session, the
file and then the whole multipart body would be read into memory; here the same request is
sent by httpx, which streams the file from the spool in 64 KiB chunks.
"""

from __future__ import annotations

from typing import Any

import httpx

from mattermost_connector.stix import Upload


class StreamingSession:
    """Stands in for pycti's requests session: pycti calls `post(url, data=..., files=...,
    headers=...)` or `post(url, json=..., headers=...)` and reads `status_code`, `json()`
    and `text`, which httpx's responses have too."""

    def __init__(self, verify: Any) -> None:
        self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(300.0, connect=30.0))

    def post(
        self,
        url: str,
        data: dict[str, str] | None = None,
        files: list[tuple[str, tuple[str, Any, str]]] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        **_: Any,  # verify, cert, proxies, timeout: set on the client
    ) -> httpx.Response:
        if files is None:
            return self._client.post(url, json=json, headers=headers)
        return self._client.post(url, data=data, files=files, headers=headers)

    def close(self) -> None:
        self._client.close()


class ArtifactUploader:
    """One pycti API client of its own (the helper's is shared by the delivery threads),
    whose transport streams."""

    def __init__(self, helper: Any, no_trigger_import: bool) -> None:
        from pycti import OpenCTIApiClient

        self._api = OpenCTIApiClient(
            helper.opencti_url,
            helper.opencti_token,
            "error",
            helper.opencti_ssl_verify,
            custom_headers=helper.opencti_custom_headers,
            perform_health_check=False,
        )
        self._session = StreamingSession(helper.opencti_ssl_verify)
        self._api.session = self._session
        self._no_trigger_import = no_trigger_import

    def upload(self, upload: Upload) -> dict[str, Any]:
        """Create (or upsert: same hashes, same id) the Artifact, then store its file."""
        artifact = upload.artifact
        markings = artifact["object_marking_refs"]
        result = self._api.stix_cyber_observable.create(
            observableData={
                key: artifact[key]
                for key in (
                    "type",
                    "id",
                    "hashes",
                    "mime_type",
                    "x_opencti_additional_names",
                    "x_opencti_description",
                )
            },
            objectMarking=markings,
        )
        if not result:
            raise ValueError(f"the platform created no Artifact for {upload.name}")
        with open(upload.path, "rb") as data:
            pushed = self._api.stix_cyber_observable.add_file(
                id=result["id"],
                file_name=upload.name,
                data=data,
                fileMarkings=markings,
                mime_type=upload.mime_type,
                no_trigger_import=self._no_trigger_import,
            )
        if not pushed:
            raise ValueError(f"the platform stored no file for {upload.name}")
        return result

    def close(self) -> None:
        self._session.close()
