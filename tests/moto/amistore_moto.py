"""moto_server, with two gaps filled, for amistore's AWS tests.

moto's RegisterImage keeps only Name and Description: it gives every image one
made-up 15 GiB snapshot and drops the block device mappings, architecture, boot
mode, tags and the rest. amistore's restore registers images over the snapshots
it wrote, and its store reads those mappings back, so the AWS adapters cannot be
tested end to end without them. This launcher patches moto's handler to keep
every RegisterImage parameter the EC2 model defines and amistore sends.

moto's HeadBucket ignores ExpectedBucketOwner; S3 answers 403 when the bucket
belongs to another account, which is how amistore keeps one account from
storing into or restoring from another's bucket. The patch does the same.

moto's EBS StartSnapshot ignores Encrypted and KmsKeyArn, and its RegisterImage
marks every mapping unencrypted; EC2 reports a snapshot's encryption and key
(DescribeSnapshots) and an image's mappings as encrypted when their snapshots
are. The patch keeps both, so a restore's "encrypted as its source was" can be
followed end to end. (moto checks no KMS permission: the IAM check does.)

moto's own server runs unchanged otherwise.

What the patch does NOT make true of real EC2 (the request-capturing tests in
shared/aws/tests/requests.rs check what amistore sends instead): RegisterImage's
validation of the mappings against the snapshots (sizes, states, encryption).

Usage: python amistore_moto.py PORT [PARENT_PID]
With PARENT_PID, the server exits when that process does (test binaries start
their own server when the test command has not started one).
"""

import os
import sys
import threading
import time

from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.core.responses import ActionResult
from moto.s3.responses import S3Response
from moto.ebs.responses import EBSResponse

_moto_mappings = Ami.block_device_mappings.fget


def _mappings(self):
    kept = self.__dict__.get("_amistore_mappings")
    return kept if kept is not None else _moto_mappings(self)


Ami.block_device_mappings = property(_mappings)


def _bool(value):
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def register_image(self):
    name = self._get_param("Name")
    description = self._get_param("Description", "")
    self.error_on_dryrun()
    image = self.ec2_backend.register_image(name, description)
    image.architecture = self._get_param("Architecture") or "i386"
    image.virtualization_type = self._get_param("VirtualizationType") or "paravirtual"
    image.root_device_name = self._get_param("RootDeviceName") or "/dev/sda1"
    image.root_device_type = "ebs"
    image.boot_mode = self._get_param("BootMode")
    image.ena_support = _bool(self._get_param("EnaSupport", False))
    image.sriov = image.sriov_net_support = self._get_param("SriovNetSupport")
    image.tpm_support = self._get_param("TpmSupport")
    image.imds_support = self._get_param("ImdsSupport")
    image.uefi = self._get_param("UefiData")
    image.kernel_id = self._get_param("KernelId")
    mappings = []
    for m in self._get_param("BlockDeviceMappings", []) or []:
        mapping = {"DeviceName": m.get("DeviceName")}
        if m.get("VirtualName"):
            mapping["VirtualName"] = m["VirtualName"]
        if "NoDevice" in m:
            mapping["NoDevice"] = m["NoDevice"]
        ebs = m.get("Ebs")
        if ebs:
            kept = {}
            for key in ("SnapshotId", "VolumeType"):
                if ebs.get(key) is not None:
                    kept[key] = ebs[key]
            for key in ("VolumeSize", "Iops", "Throughput"):
                if ebs.get(key) is not None:
                    kept[key] = int(ebs[key])
            if ebs.get("DeleteOnTermination") is not None:
                kept["DeleteOnTermination"] = _bool(ebs["DeleteOnTermination"])
            snapshot = self.ec2_backend.snapshots.get(ebs.get("SnapshotId"))
            kept["Encrypted"] = bool(snapshot is not None and snapshot.encrypted)
            mapping["Ebs"] = kept
        mappings.append(mapping)
    image._amistore_mappings = mappings
    tags = {}
    for spec in self._get_param("TagSpecifications", []) or []:
        if spec.get("ResourceType") == "image":
            for tag in spec.get("Tags", []) or []:
                tags[tag["Key"]] = tag.get("Value", "")
    if tags:
        image.add_tags(tags)
    return ActionResult({"ImageId": image.id})


AmisResponse.register_image = register_image

_moto_head_bucket = S3Response.head_bucket


def head_bucket(self):
    expected = self.headers.get("x-amz-expected-bucket-owner")
    if expected:
        try:
            bucket = self.backend.head_bucket(self.bucket_name)
        except Exception:
            return _moto_head_bucket(self)
        if bucket.account_id != expected:
            return 403, {}, ""
    return _moto_head_bucket(self)


S3Response.head_bucket = head_bucket

_moto_start_snapshot = EBSResponse.start_snapshot


def start_snapshot(self):
    result = _moto_start_snapshot(self)
    encrypted = _bool(self._get_param("Encrypted", False))
    key = self._get_param("KmsKeyArn")
    if encrypted or key:
        snapshot = self.ebs_backend.ec2_backend.snapshots[result.result["SnapshotId"]]
        snapshot.encrypted = True
        snapshot.kms_key_id = key or f"arn:aws:kms:{self.region}:{self.current_account}:alias/aws/ebs"
    return result


EBSResponse.start_snapshot = start_snapshot

def _exit_with(parent):
    while True:
        try:
            os.kill(parent, 0)
        except OSError:
            os._exit(0)
        time.sleep(1)


if __name__ == "__main__":
    from moto.server import main

    if len(sys.argv) > 2:
        threading.Thread(target=_exit_with, args=(int(sys.argv[2]),), daemon=True).start()

    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
