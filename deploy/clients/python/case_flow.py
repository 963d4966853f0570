#!/usr/bin/env python3
"""Reads a unit's case-flow report (Biểu 06) and its rates from the KPI API.

A client generated from proto/ (deploy/scripts/python-client.sh), as a
district or province system written in Python would call it. Prints one
JSON object: the GetCaseFlow reply with each row's columns by their names,
and the GetRates figures of the same unit and period.

    PYTHONPATH=target/python-client/generated \\
      target/python-client/venv/bin/python deploy/clients/python/case_flow.py \\
      --addr 127.0.0.1:50051 --unit P46 --period 2025-Q1 --by field [--token T]
"""

import argparse
import json
import sys

import grpc

from kpi.v1 import kpi_pb2, kpi_pb2_grpc

GROUPS = {
    "unit": kpi_pb2.GROUP_BY_UNIT,
    "field": kpi_pb2.GROUP_BY_FIELD,
    "procedure": kpi_pb2.GROUP_BY_PROCEDURE,
}


def columns(flow):
    return {field.name: getattr(flow, field.name) for field in flow.DESCRIPTOR.fields}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--unit", required=True)
    parser.add_argument("--period", required=True)
    parser.add_argument("--by", choices=sorted(GROUPS), default="unit")
    parser.add_argument("--token", help="a reader token (Authorization: Bearer)")
    args = parser.parse_args()

    metadata = [("authorization", "Bearer " + args.token)] if args.token else []
    with grpc.insecure_channel(args.addr) as channel:
        stub = kpi_pb2_grpc.KpiServiceStub(channel)
        try:
            flow = stub.GetCaseFlow(
                kpi_pb2.GetCaseFlowRequest(
                    unit_id=args.unit, period=args.period, group_by=GROUPS[args.by]
                ),
                metadata=metadata,
                timeout=30,
            )
            rates = stub.GetRates(
                kpi_pb2.GetRatesRequest(unit_id=args.unit, period=args.period),
                metadata=metadata,
                timeout=30,
            )
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    print(
        json.dumps(
            {
                "unit_id": flow.unit_id,
                "unit_name": flow.unit_name,
                "period": flow.period,
                "as_of": flow.as_of,
                "rows": [
                    {"key": row.key, "name": row.name, "flow": columns(row.flow)}
                    for row in flow.rows
                ],
                "total": columns(flow.total),
                "on_time_rate": next(
                    (r.percent for r in rates.rates if r.kpi == "on_time_rate"), None
                ),
            },
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
