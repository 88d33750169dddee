"""Outbound channels: ``base`` holds the contract (build -> :class:`base.Outgoing`, send ->
:class:`base.Verdict`); ``email`` is email over SMTP; ``sms`` is SMS. The dispatcher knows no
channel by name: ``postwarden.outbound.registry`` builds them from the settings.
"""

from __future__ import annotations
