"""factory_boy factories for the fleet, customers and users."""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from marketplace.models import Gpu, GpuModel, Membership, Node, Organization, Region


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization
        django_get_or_create = ["slug"]

    name = factory.Sequence(lambda n: f"Provider {n}")
    slug = factory.Sequence(lambda n: f"provider-{n}")
    kind = Organization.Kind.PROVIDER


class CustomerFactory(ProviderFactory):
    name = factory.Sequence(lambda n: f"Customer {n}")
    slug = factory.Sequence(lambda n: f"customer-{n}")
    kind = Organization.Kind.CUSTOMER


class RegionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Region
        django_get_or_create = ["code"]

    code = "eu-central"
    name = "Europe Central"


def gpu_model(name: str) -> GpuModel:
    """Return a catalogue model seeded by migration."""
    return GpuModel.objects.get(name=name)


class NodeFactory(factory.django.DjangoModelFactory):
    """A node with ``gpu_count`` healthy GPUs created alongside it."""

    class Meta:
        model = Node
        skip_postgeneration_save = True

    provider = factory.SubFactory(ProviderFactory)
    region = factory.SubFactory(RegionFactory)
    hostname = factory.Sequence(lambda n: f"node-{n:04d}")
    gpu_model = factory.LazyFunction(lambda: gpu_model("T4"))
    gpu_count = 2
    cpu_millicores = 64000
    memory_mib = 262144
    price_per_gpu_hour = Decimal("1.00")

    @factory.post_generation
    def gpus(node, create, extracted, **kwargs):
        if create:
            Gpu.objects.bulk_create(Gpu(node=node, index=index) for index in range(node.gpu_count))


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ["username"]

    username = factory.Sequence(lambda n: f"user{n}")


def member_with_token(organization: Organization, username: str) -> tuple:
    """Create a user in ``organization`` and return ``(user, token_key)``."""
    user = UserFactory(username=username)
    Membership.objects.create(user=user, organization=organization, role=Membership.Role.MEMBER)
    return user, Token.objects.create(user=user).key
