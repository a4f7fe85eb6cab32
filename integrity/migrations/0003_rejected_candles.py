# The quarantine of bars refused at ingest (integrity.models.rejected).

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('integrity', '0002_instrument_availability_delay'),
    ]

    operations = [
        migrations.CreateModel(
            name='RejectedCandle',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('symbol', models.CharField(max_length=50)),
                ('timeframe', models.CharField(choices=[('1m', '1 minute'), ('5m', '5 minutes'), ('15m', '15 minutes'), ('1h', '1 hour'), ('4h', '4 hours'), ('1d', '1 day')], max_length=20)),
                ('ts', models.DateTimeField(help_text='bar open time (UTC) as the provider sent it')),
                ('open', models.FloatField(blank=True, null=True)),
                ('high', models.FloatField(blank=True, null=True)),
                ('low', models.FloatField(blank=True, null=True)),
                ('close', models.FloatField(blank=True, null=True)),
                ('volume', models.FloatField(blank=True, null=True)),
                ('raw_values', models.JSONField(blank=True, default=dict, help_text='open, high, low, close, volume as they came (NaN/inf as text)')),
                ('rules', models.CharField(help_text='the validation rules broken, comma-separated', max_length=255)),
                ('copies', models.PositiveIntegerField(default=1, help_text='copies of this bar time in the refused page')),
                ('execution_id', models.UUIDField(help_text='the backfill execution that last refused the bar')),
                ('provider', models.CharField(blank=True, default='', max_length=50)),
                ('rejected_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'db_table': 'rejected_candles',
                'indexes': [models.Index(fields=['execution_id'], name='rejected_candles_execution_idx')],
                'constraints': [models.UniqueConstraint(fields=('symbol', 'timeframe', 'ts'), name='rejected_candles_series_ts_uniq')],
            },
        ),
    ]
