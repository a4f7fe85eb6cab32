"""On PostgreSQL, ``candles`` becomes a partitioned table (``integrity.partitions``): converted in
place, rows moved in id ranges each in its own transaction, so an interrupted migration continues
where it stopped when run again. A large table can be converted beforehand, with progress, by
``manage.py candle_partitions --convert``; this migration then finds it done. SQLite: nothing.

The model is unchanged (Django still sees ``id`` as the primary key; on PostgreSQL the key is
(id, timeframe, ts), ids still from one sequence). Reverse: nothing — the partitioned table serves
the earlier schema just as well.
"""

from django.db import migrations


def partition_candles(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from integrity.partitions import convert_candles

    convert_candles()


class Migration(migrations.Migration):
    atomic = False  # each batch of moved rows commits on its own: resumable

    dependencies = [
        ("integrity", "0008_instrument_price_decimals"),
    ]

    operations = [
        migrations.RunPython(partition_candles, migrations.RunPython.noop, elidable=False),
    ]
