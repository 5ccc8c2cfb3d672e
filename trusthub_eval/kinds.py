"""The kinds of TrustHub record this app evaluates: Customer Profiles and Trust Products.

Both are TrustHub bundles with BU… SIDs (a SID does not tell them apart), the same fields and
the same evaluations. They differ only in their URLs' path segment, the field that names the
record in an evaluation, and their names; each of those is said here, once.
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from trusthub_eval.sids import SidKind, check_sid, sid_validator


class RecordKind(models.TextChoices):
    CUSTOMER_PROFILE = "customer-profile", _("Customer Profile")
    TRUST_PRODUCT = "trust-product", _("Trust Product")

    @property
    def field(self) -> str:
        """The name of the evaluation's (and a duplicate's) foreign key to a record of this
        kind; the other kind's is null."""
        return _FIELDS[self]

    @property
    def path(self) -> str:
        """The collection's segment of TrustHub's URLs: ``/v1/{path}/{sid}/Evaluations``."""
        return _PATHS[self]

    @property
    def sid_field(self) -> str:
        """The field of TrustHub's evaluation that names the evaluated record."""
        return _SID_FIELDS[self]

    @property
    def sid_label(self) -> str:
        """What a SID of this kind is called in messages."""
        return _SID_LABELS[self]

    def check_sid(self, value: object) -> str:
        """Return ``value`` if it is a SID of this kind; raise
        :class:`~trusthub_eval.sids.InvalidSid` naming the kind otherwise."""
        # Both kinds are bundles: BU… is the prefix of each, so only the message tells them apart.
        return check_sid(value, SidKind.CUSTOMER_PROFILE, label=self.sid_label)

    @property
    def sid_validator(self) -> RegexValidator:
        """The validator of a model or form field holding a SID of this kind."""
        return sid_validator(SidKind.CUSTOMER_PROFILE, label=self.sid_label)


_FIELDS = {
    RecordKind.CUSTOMER_PROFILE: "customer_profile",
    RecordKind.TRUST_PRODUCT: "trust_product",
}
_PATHS = {
    RecordKind.CUSTOMER_PROFILE: "CustomerProfiles",
    RecordKind.TRUST_PRODUCT: "TrustProducts",
}
_SID_FIELDS = {
    RecordKind.CUSTOMER_PROFILE: "customer_profile_sid",
    RecordKind.TRUST_PRODUCT: "trust_product_sid",
}
_SID_LABELS = {
    RecordKind.CUSTOMER_PROFILE: "Customer Profile SID",
    RecordKind.TRUST_PRODUCT: "Trust Product SID",
}
