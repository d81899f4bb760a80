"""S3 behaviour through a real client (boto3) against a Shale gateway.

Usage: s3_client.py ENDPOINT ACCESS_KEY SECRET_KEY. Exits non-zero on the first failure,
printing what differed.
"""
import hashlib
import os
import sys
import urllib.request

import boto3
import botocore
from botocore.config import Config

endpoint, access, secret, endpoint2 = sys.argv[1:5]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2})


def client(secret_key=secret):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                        aws_secret_access_key=secret_key, region_name="us-east-1", config=cfg)


s3 = client()


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


# Buckets
s3.create_bucket(Bucket="photos")
expect_error("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket="photos")
assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["photos"]
s3.head_bucket(Bucket="photos")
expect_error("404", s3.head_bucket, Bucket="nope")
expect_error("NoSuchBucket", s3.put_object, Bucket="nope", Key="k", Body=b"x")

# Small object, metadata, content type, ETag = MD5
small = b"hello shale"
r = s3.put_object(Bucket="photos", Key="a/small.txt", Body=small, ContentType="text/plain",
                  Metadata={"owner": "ada"})
assert r["ETag"] == '"%s"' % hashlib.md5(small).hexdigest(), r["ETag"]
g = s3.get_object(Bucket="photos", Key="a/small.txt")
assert g["Body"].read() == small
assert g["ContentType"] == "text/plain", g["ContentType"]
assert g["Metadata"] == {"owner": "ada"}, g["Metadata"]
h = s3.head_object(Bucket="photos", Key="a/small.txt")
assert h["ContentLength"] == len(small)

# Large object (several 1 MiB chunks), read whole and by range
big = os.urandom(3 * 1024 * 1024 + 12345)
s3.put_object(Bucket="photos", Key="a/big.bin", Body=big)
assert s3.get_object(Bucket="photos", Key="a/big.bin")["Body"].read() == big
part = s3.get_object(Bucket="photos", Key="a/big.bin", Range="bytes=1048570-2097160")
assert part["Body"].read() == big[1048570:2097161]
assert part["ContentRange"] == "bytes 1048570-2097160/%d" % len(big), part["ContentRange"]
expect_error("InvalidRange", s3.get_object, Bucket="photos", Key="a/big.bin", Range="bytes=%d-" % (len(big) + 10))

# Overwrite: readers see the whole new object
big2 = os.urandom(2 * 1024 * 1024 + 7)
s3.put_object(Bucket="photos", Key="a/big.bin", Body=big2)
assert s3.get_object(Bucket="photos", Key="a/big.bin")["Body"].read() == big2

# Conditional requests
etag = s3.head_object(Bucket="photos", Key="a/small.txt")["ETag"]
expect_error("PreconditionFailed", s3.get_object, Bucket="photos", Key="a/small.txt", IfMatch='"0000"')
expect_error("304", s3.get_object, Bucket="photos", Key="a/small.txt", IfNoneMatch=etag)
assert s3.get_object(Bucket="photos", Key="a/small.txt", IfMatch=etag)["Body"].read() == small
expect_error("PreconditionFailed", s3.put_object, Bucket="photos", Key="a/small.txt", Body=b"no", IfNoneMatch="*")

# Bad Content-MD5 is refused and the old object stays
import base64
wrong_md5 = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
expect_error("BadDigest", s3.put_object, Bucket="photos", Key="a/small.txt", Body=b"new body", ContentMD5=wrong_md5)
assert s3.get_object(Bucket="photos", Key="a/small.txt")["Body"].read() == small

# Listing: prefix, delimiter, common prefixes, pagination
for i in range(25):
    s3.put_object(Bucket="photos", Key="list/%02d" % i, Body=b"%d" % i)
for d in ["x", "y", "z"]:
    for i in range(3):
        s3.put_object(Bucket="photos", Key="dirs/%s/%d" % (d, i), Body=b"d")
s3.put_object(Bucket="photos", Key="dirs/top", Body=b"t")
r = s3.list_objects_v2(Bucket="photos", Prefix="dirs/", Delimiter="/")
assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["dirs/x/", "dirs/y/", "dirs/z/"], r.get("CommonPrefixes")
assert [o["Key"] for o in r["Contents"]] == ["dirs/top"], r.get("Contents")
keys, token = [], None
while True:
    kw = {"Bucket": "photos", "Prefix": "list/", "MaxKeys": 7}
    if token:
        kw["ContinuationToken"] = token
    r = s3.list_objects_v2(**kw)
    keys += [o["Key"] for o in r.get("Contents", [])]
    if not r["IsTruncated"]:
        break
    token = r["NextContinuationToken"]
assert keys == ["list/%02d" % i for i in range(25)], keys
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="photos", Prefix="dirs/", Delimiter="/", PaginationConfig={"PageSize": 2})
seen = []
for p in pages:
    seen += [c["Prefix"] for c in p.get("CommonPrefixes", [])] + [o["Key"] for o in p.get("Contents", [])]
assert sorted(seen) == ["dirs/top", "dirs/x/", "dirs/y/", "dirs/z/"], seen
r = s3.list_objects_v2(Bucket="photos", StartAfter="list/20", Prefix="list/")
assert [o["Key"] for o in r["Contents"]] == ["list/%02d" % i for i in range(21, 25)]
r = s3.list_objects(Bucket="photos", Prefix="list/", MaxKeys=10)
assert len(r["Contents"]) == 10 and r["IsTruncated"]

# Delete, batch delete, bucket must be empty to go
s3.delete_object(Bucket="photos", Key="a/small.txt")
expect_error("NoSuchKey", s3.get_object, Bucket="photos", Key="a/small.txt")
expect_error("BucketNotEmpty", s3.delete_bucket, Bucket="photos")
all_keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="photos") for o in p.get("Contents", [])]
s3.delete_objects(Bucket="photos", Delete={"Objects": [{"Key": k} for k in all_keys]})
assert s3.list_objects_v2(Bucket="photos")["KeyCount"] == 0
s3.delete_bucket(Bucket="photos")
assert s3.list_buckets()["Buckets"] == []

# Wrong secret: refused, nothing changes
expect_error("SignatureDoesNotMatch", client("not-the-secret").create_bucket, Bucket="intruder")
assert s3.list_buckets()["Buckets"] == []

# Presigned GET works; an expired one does not
s3.create_bucket(Bucket="share")
s3.put_object(Bucket="share", Key="f", Body=b"shared")
url = s3.generate_presigned_url("get_object", Params={"Bucket": "share", "Key": "f"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == b"shared"

# A client that disconnects mid-upload leaves the previous object intact.
import socket
from urllib.parse import urlparse
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

s3.put_object(Bucket="share", Key="victim", Body=b"old and intact")
length = 3 * 1024 * 1024


def raw_put(body, send):
    """A hand-signed PUT of `length` bytes on a raw socket; sends `send` of them."""
    req = AWSRequest(method="PUT", url=endpoint + "/share/victim", data=body,
                     headers={"Content-Length": str(length)})
    S3SigV4Auth(Credentials(access, secret), "s3", "us-east-1").add_auth(req)
    u = urlparse(endpoint)
    sock = socket.create_connection((u.hostname, u.port))
    head = "PUT /share/victim HTTP/1.1\r\nHost: %s\r\n" % u.netloc
    head += "".join("%s: %s\r\n" % (k, v) for k, v in req.headers.items() if k.lower() != "host")
    sock.sendall(head.encode() + b"\r\n" + body[:send])
    if send == len(body):
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:600]
    sock.close()


body = os.urandom(length)
raw_put(body, length // 2)  # the client goes away halfway
import time
time.sleep(0.5)
assert s3.get_object(Bucket="share", Key="victim")["Body"].read() == b"old and intact"
raw_put(body, length)  # control: the same request, whole, does replace it
assert s3.get_object(Bucket="share", Key="victim")["Body"].read() == body

# Read-after-write and list-after-write across two gateways of one cluster.
other = boto3.client("s3", endpoint_url=endpoint2, aws_access_key_id=access,
                     aws_secret_access_key=secret, region_name="us-east-1", config=cfg)
for i in range(20):
    body = os.urandom(100 + i * 7000)
    s3.put_object(Bucket="share", Key="c/%d" % i, Body=body)
    assert other.get_object(Bucket="share", Key="c/%d" % i)["Body"].read() == body
    listed = [o["Key"] for o in other.list_objects_v2(Bucket="share", Prefix="c/%d" % i)["Contents"]]
    assert "c/%d" % i in listed, listed
    s3.delete_object(Bucket="share", Key="c/%d" % i)
    expect_error("NoSuchKey", other.get_object, Bucket="share", Key="c/%d" % i)
    assert other.list_objects_v2(Bucket="share", Prefix="c/%d" % i)["KeyCount"] == 0

# Multipart upload: parts, ETag, reads across parts, errors, abort, listing.
MiB = 1024 * 1024
parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB + 3), os.urandom(MiB // 2)]
up = s3.create_multipart_upload(Bucket="share", Key="multi", ContentType="application/x-test")["UploadId"]
etags = []
for n, data in enumerate(parts_data, start=1):
    etags.append(s3.upload_part(Bucket="share", Key="multi", UploadId=up, PartNumber=n, Body=data)["ETag"])
listed = s3.list_parts(Bucket="share", Key="multi", UploadId=up)["Parts"]
assert [p["PartNumber"] for p in listed] == [1, 2, 3] and [p["Size"] for p in listed] == [len(d) for d in parts_data]
assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="share")["Uploads"]] == [up]
expect_error("InvalidPartOrder", s3.complete_multipart_upload, Bucket="share", Key="multi", UploadId=up,
             MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]})
expect_error("InvalidPart", s3.complete_multipart_upload, Bucket="share", Key="multi", UploadId=up,
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]})
r = s3.complete_multipart_upload(Bucket="share", Key="multi", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
want_etag = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
assert r["ETag"] == '"%s"' % want_etag, (r["ETag"], want_etag)
whole = b"".join(parts_data)
got = s3.get_object(Bucket="share", Key="multi")
assert got["Body"].read() == whole and got["ContentType"] == "application/x-test"
cross = s3.get_object(Bucket="share", Key="multi", Range="bytes=%d-%d" % (5 * MiB - 10, 10 * MiB + 10))
assert cross["Body"].read() == whole[5 * MiB - 10:10 * MiB + 11]
expect_error("NoSuchUpload", s3.upload_part, Bucket="share", Key="multi", UploadId=up, PartNumber=4, Body=b"late")
p2 = s3.get_object(Bucket="share", Key="multi", PartNumber=2)
assert p2["Body"].read() == parts_data[1] and p2["PartsCount"] == 3, p2.get("PartsCount")
assert s3.head_object(Bucket="share", Key="multi", PartNumber=3)["ContentLength"] == len(parts_data[2])
expect_error("InvalidRange", s3.get_object, Bucket="share", Key="multi", PartNumber=4)
# A small part before the last is refused.
up2 = s3.create_multipart_upload(Bucket="share", Key="small-parts")["UploadId"]
e1 = s3.upload_part(Bucket="share", Key="small-parts", UploadId=up2, PartNumber=1, Body=b"tiny")["ETag"]
e2 = s3.upload_part(Bucket="share", Key="small-parts", UploadId=up2, PartNumber=2, Body=b"tiny too")["ETag"]
expect_error("EntityTooSmall", s3.complete_multipart_upload, Bucket="share", Key="small-parts", UploadId=up2,
             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
s3.abort_multipart_upload(Bucket="share", Key="small-parts", UploadId=up2)
expect_error("NoSuchUpload", s3.list_parts, Bucket="share", Key="small-parts", UploadId=up2)
expect_error("404", s3.head_object, Bucket="share", Key="small-parts")
# Server-side copy, keeping or replacing metadata.
s3.put_object(Bucket="share", Key="orig", Body=big2, ContentType="image/x-test", Metadata={"k": "v"})
s3.copy_object(Bucket="share", Key="copy", CopySource={"Bucket": "share", "Key": "orig"})
c = s3.get_object(Bucket="share", Key="copy")
assert c["Body"].read() == big2 and c["ContentType"] == "image/x-test" and c["Metadata"] == {"k": "v"}
s3.copy_object(Bucket="share", Key="copy2", CopySource={"Bucket": "share", "Key": "multi"},
               MetadataDirective="REPLACE", ContentType="text/x-new", Metadata={"n": "1"})
c = s3.get_object(Bucket="share", Key="copy2")
assert c["Body"].read() == whole and c["ContentType"] == "text/x-new" and c["Metadata"] == {"n": "1"}
expect_error("NoSuchKey", s3.copy_object, Bucket="share", Key="x", CopySource={"Bucket": "share", "Key": "absent"})
# Multipart copy (UploadPartCopy): parts cut from existing objects, by byte range or whole.
up3 = s3.create_multipart_upload(Bucket="share", Key="assembled")["UploadId"]
first = s3.upload_part_copy(Bucket="share", Key="assembled", UploadId=up3, PartNumber=1,
                            CopySource={"Bucket": "share", "Key": "multi"},
                            CopySourceRange="bytes=%d-%d" % (MiB, 6 * MiB))["CopyPartResult"]
assert first["ETag"] == '"%s"' % hashlib.md5(whole[MiB:6 * MiB + 1]).hexdigest(), first
second = s3.upload_part_copy(Bucket="share", Key="assembled", UploadId=up3, PartNumber=2,
                             CopySource={"Bucket": "share", "Key": "orig"})["CopyPartResult"]
expect_error("InvalidArgument", s3.upload_part_copy, Bucket="share", Key="assembled", UploadId=up3, PartNumber=3,
             CopySource={"Bucket": "share", "Key": "orig"}, CopySourceRange="bytes=0-%d" % len(big2))
expect_error("PreconditionFailed", s3.upload_part_copy, Bucket="share", Key="assembled", UploadId=up3,
             PartNumber=3, CopySource={"Bucket": "share", "Key": "orig"}, CopySourceIfMatch='"nope"')
expect_error("NoSuchKey", s3.upload_part_copy, Bucket="share", Key="assembled", UploadId=up3, PartNumber=3,
             CopySource={"Bucket": "share", "Key": "absent"})
expect_error("NoSuchUpload", s3.upload_part_copy, Bucket="share", Key="assembled", UploadId="no-such-upload",
             PartNumber=1, CopySource={"Bucket": "share", "Key": "orig"})
s3.complete_multipart_upload(Bucket="share", Key="assembled", UploadId=up3, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": second["ETag"]}]})
assert s3.get_object(Bucket="share", Key="assembled")["Body"].read() == whole[MiB:6 * MiB + 1] + big2

# Flexible checksums are verified, not passed through.
s3.put_object(Bucket="share", Key="ck", Body=b"checked body", ChecksumAlgorithm="CRC32")
s3.put_object(Bucket="share", Key="ck256", Body=b"checked body", ChecksumAlgorithm="SHA256")
expect_error("BadDigest", s3.put_object, Bucket="share", Key="ck-bad", Body=b"checked body", ChecksumCRC32="AAAAAA==")
expect_error("NoSuchKey", s3.get_object, Bucket="share", Key="ck-bad")
up3 = s3.create_multipart_upload(Bucket="share", Key="ck-part")["UploadId"]
expect_error("BadDigest", s3.upload_part, Bucket="share", Key="ck-part", UploadId=up3, PartNumber=1,
             Body=b"part body", ChecksumCRC32="AAAAAA==")
assert "Parts" not in s3.list_parts(Bucket="share", Key="ck-part", UploadId=up3)
s3.abort_multipart_upload(Bucket="share", Key="ck-part", UploadId=up3)
# The high-level transfer path (what `aws s3 cp` does for big files).
from boto3.s3.transfer import TransferConfig
import tempfile
src = tempfile.NamedTemporaryFile(delete=False)
src.write(os.urandom(13 * MiB + 17))
src.close()
tc = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
s3.upload_file(src.name, "share", "transfer.bin", Config=tc)
dst = src.name + ".down"
s3.download_file("share", "transfer.bin", dst, Config=tc)
assert open(dst, "rb").read() == open(src.name, "rb").read()
assert s3.head_object(Bucket="share", Key="transfer.bin")["ETag"].endswith('-3"')

# Public-read buckets: anonymous reads and listings only, and only while public.
import time
from botocore import UNSIGNED
anon = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                    config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"},
                                  retries={"max_attempts": 1}))
s3.create_bucket(Bucket="open", ACL="public-read")
s3.put_object(Bucket="open", Key="pub/a.txt", Body=b"for everyone")
assert anon.get_object(Bucket="open", Key="pub/a.txt")["Body"].read() == b"for everyone"
assert anon.head_object(Bucket="open", Key="pub/a.txt")["ContentLength"] == 12
assert [o["Key"] for o in anon.list_objects_v2(Bucket="open")["Contents"]] == ["pub/a.txt"]
assert urllib.request.urlopen("%s/open/pub/a.txt" % endpoint).read() == b"for everyone"
expect_error("AccessDenied", anon.put_object, Bucket="open", Key="x", Body=b"no")
expect_error("AccessDenied", anon.delete_object, Bucket="open", Key="pub/a.txt")
expect_error("AccessDenied", anon.get_object, Bucket="share", Key="orig")
expect_error("AccessDenied", anon.list_buckets)
assert s3.get_object(Bucket="open", Key="pub/a.txt")["Body"].read() == b"for everyone"
grants = s3.get_bucket_acl(Bucket="open")["Grants"]
assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in grants), grants
expect_error("NotImplemented", s3.put_bucket_acl, Bucket="open", ACL="public-read-write")
s3.put_bucket_acl(Bucket="open", ACL="private")
time.sleep(2.5)  # gateways trust a bucket's flag for 2 s
expect_error("AccessDenied", anon.get_object, Bucket="open", Key="pub/a.txt")
assert not any(g["Grantee"].get("URI") for g in s3.get_bucket_acl(Bucket="open")["Grants"])
s3.put_bucket_acl(Bucket="share", ACL="public-read")
time.sleep(2.5)
assert anon.get_object(Bucket="share", Key="orig")["Body"].read() == big2
s3.put_bucket_acl(Bucket="share", ACL="private")
print("s3 client checks passed")
