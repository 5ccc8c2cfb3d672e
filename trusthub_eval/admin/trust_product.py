"""The trust products' admin: a customer profile's, with the profile each is built on."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from trusthub_eval.admin.base import change_url
from trusthub_eval.admin.filters import ChosenRecordFilter
from trusthub_eval.admin.record import RecordAdmin
from trusthub_eval.models import CustomerProfile, TrustProduct


@admin.register(TrustProduct)
class TrustProductAdmin(RecordAdmin):
    # The profile goes under the name: a column of its own would push the list past 1,400 px.
    list_display = ["name", *RecordAdmin.list_display[1:]]
    list_display_links = ["sid"]
    list_filter = [*RecordAdmin.list_filter, ("customer_profile", ChosenRecordFilter)]
    list_select_related = [*RecordAdmin.list_select_related, "customer_profile"]
    list_defer = (*RecordAdmin.list_defer, "customer_profile__raw")
    raw_id_fields = [*RecordAdmin.raw_id_fields, "customer_profile"]
    identity_fields = [*RecordAdmin.identity_fields, "customer_profile"]
    guarded_fields = (*RecordAdmin.guarded_fields, "customer_profile")
    search_help_text = _(
        "A trust product SID or that of the customer profile it is built on (BU…), or part of a "
        "name or an email address."
    )

    @admin.display(description=_("friendly name and customer profile"), ordering="friendly_name")
    def name(self, product: TrustProduct) -> SafeString:
        return format_html(
            '<a href="{}">{}</a><div class="trusthub-quiet">{}</div>',
            change_url(product),
            product.friendly_name or product.sid,
            product.customer_profile or "",
        )

    def sid_search(self, sid: str) -> Q:
        # Two indexed lookups: the product's unique SID, and the profile's key (read first: a
        # join in an OR would be served by neither index).
        profile = CustomerProfile.objects.filter(sid=sid).values_list("pk", flat=True).first()
        if profile is None:
            return Q(sid=sid)
        return Q(sid=sid) | Q(customer_profile_id=profile)
