from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace fleet"

    def ready(self):
        from .catalogue_cache import connect_signals

        connect_signals()
