"""The user's bucket on any S3-compatible endpoint, through boto3.

Buckets InfraSim creates are tagged with the owning account; a re-run that
finds the bucket with our tag counts as done. A bucket another S3 account
owns, or one of ours tagged for another account, is a clear error.
"""

from __future__ import annotations

import dataclasses

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions

from identity.providers.errors import PermanentProviderError, TransientProviderError

OWNER_TAG = "infrasim-owner"


@dataclasses.dataclass(frozen=True)
class S3Settings:
    endpoint_url: str
    region: str
    access_key: str
    secret_key: str
    bucket_prefix: str
    timeout: float = 10.0


class S3Provider:
    kind = "s3"

    def __init__(self, config: S3Settings):
        self.config = config
        self.client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            config=botocore.config.Config(
                connect_timeout=config.timeout,
                read_timeout=config.timeout,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def bucket(self, handle: str) -> str:
        return f"{self.config.bucket_prefix}{handle}"

    def _call(self, operation: str, **kwargs):
        try:
            return getattr(self.client, operation)(**kwargs)
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError) as exc:
            raise TransientProviderError(f"S3 endpoint {self.config.endpoint_url} unreachable: {exc}") from exc
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:
                raise TransientProviderError(f"S3 answered {status}: {exc}") from exc
            if exc.response["Error"]["Code"] in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"} and operation != "head_bucket":
                raise PermanentProviderError(f"S3 refused our credentials: {exc.response['Error']['Code']}") from exc
            raise

    def _owner_tag(self, bucket: str) -> str | None:
        try:
            tags = self._call("get_bucket_tagging", Bucket=bucket)["TagSet"]
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in {"NoSuchTagSet", "NoSuchTagSetError"}:
                return None
            raise
        return next((tag["Value"] for tag in tags if tag["Key"] == OWNER_TAG), None)

    def _bucket_state(self, bucket: str) -> str:
        """'ours' (owned by our S3 account), 'foreign' or 'missing'. S3 lists
        only the requester's own buckets, which is the portable ownership test."""
        owned = self._call("list_buckets", Prefix=bucket).get("Buckets", [])
        if any(entry["Name"] == bucket for entry in owned):
            return "ours"
        try:
            self._call("head_bucket", Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in {"404", "NoSuchBucket", "NotFound"}:
                return "missing"
            if code in {"403", "AccessDenied", "Forbidden", "301", "PermanentRedirect"}:
                return "foreign"
            raise PermanentProviderError(f"S3 could not check {bucket}: {code}") from exc
        return "foreign"

    def is_available(self, handle: str) -> bool:
        return self._bucket_state(self.bucket(handle)) == "missing"

    def provision(self, identity) -> str:
        bucket = self.bucket(identity.handle)
        owner = str(identity.user.account_id)
        state = self._bucket_state(bucket)
        if state == "foreign":
            raise PermanentProviderError(f"bucket {bucket} is owned by another S3 account")
        if state == "missing":
            kwargs = {"Bucket": bucket}
            if self.config.region and self.config.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
            try:
                self._call("create_bucket", **kwargs)
            except botocore.exceptions.ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "BucketAlreadyExists":
                    raise PermanentProviderError(f"bucket {bucket} is owned by another S3 account") from exc
                if code != "BucketAlreadyOwnedByYou":
                    raise PermanentProviderError(f"S3 refused to create {bucket}: {code}") from exc
        # Ours on this S3 account: claim it unless another InfraSim account already did.
        tagged = self._owner_tag(bucket)
        if tagged not in (None, owner):
            raise PermanentProviderError(f"bucket {bucket} belongs to another InfraSim account")
        if tagged is None:
            self._call("put_bucket_tagging", Bucket=bucket, Tagging={"TagSet": [{"Key": OWNER_TAG, "Value": owner}]})
        return f"bucket {bucket} ready"

    def upload_file(self, handle: str, key: str, path: str, *, metadata: dict[str, str]) -> str:
        """Copy a file into the user's bucket (multipart for big ones); returns s3://bucket/key."""
        bucket = self.bucket(handle)
        try:
            self.client.upload_file(path, bucket, key, ExtraArgs={"Metadata": metadata})
        except (boto3.exceptions.S3UploadFailedError, botocore.exceptions.BotoCoreError,
                botocore.exceptions.ClientError) as exc:
            raise TransientProviderError(f"S3 upload to {bucket}/{key} failed: {exc}") from exc
        return f"s3://{bucket}/{key}"

    def deprovision(self, identity) -> str:
        bucket = self.bucket(identity.handle)
        try:
            if self._owner_tag(bucket) != str(identity.user.account_id):
                return f"bucket {bucket} was not ours; left alone"
            listing = self._call("list_objects_v2", Bucket=bucket, MaxKeys=1)
            if listing.get("KeyCount", 0):
                return f"bucket {bucket} kept: it is not empty"
            self._call("delete_bucket", Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in {"NoSuchBucket", "404"}:
                return f"bucket {bucket} already gone"
            raise PermanentProviderError(f"S3 refused to delete {bucket}: {exc}") from exc
        return f"deleted bucket {bucket}"
