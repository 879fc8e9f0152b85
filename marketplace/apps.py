from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace fleet"

    def ready(self):
        from . import catalogue_cache, prepared_statements

        catalogue_cache.connect_signals()
        prepared_statements.connect_signals()
