"""The seed's sample event (../shared/seed/program-user-info.md, as real JSON) and its row."""

from __future__ import annotations

import datetime as dt
from typing import Any

SEED_EVENT: dict[str, Any] = {
    "_id": "63bfa8f173f6368ebde21bbe",
    "deleted": False,
    "programId": "5f362b78af0a4decfa9a106f",
    "programName": "$prorgramName",
    "programExternalId": "$programExternalId",
    "requestForPIIConsent": True,
    "userRoleInformation": {
        "role": "HM,DEO",
        "state": "db331a8c-b9e2-45f8-b3c0-7ec1e826b6df",
        "district": "1dcbc362-ec4c-4559-9081-e0c2864c2931",
        "school": "c5726207-4f9f-4f45-91f1-3e9e8e84d824",
    },
    "userId": "ba9aa220-ff1b-4717-b6ea-ace55f04fc16",
    "appInformation": {"appName": "Diksha", "appVersion": "5.2"},
    "userProfile": {
        "userLocations": [
            {
                "code": "2822",
                "name": "ANANTAPUR",
                "id": "2f76dcf5-e43b-4f71-a3f2-c8f19e1fce03",
                "type": "district",
                "parentId": "bc75cc99-9205-463e-a722-5326857838f8",
            },
            {
                "code": "282262",
                "name": "AGALI",
                "id": "966c3be4-c125-467d-aaff-1eb1cd525923",
                "type": "block",
                "parentId": "2f76dcf5-e43b-4f71-a3f2-c8f19e1fce03",
            },
            {
                "code": "28",
                "name": "Andhra Pradesh",
                "id": "bc75cc99-9205-463e-a722-5326857838f8",
                "type": "state",
                "parentId": None,
            },
            {
                "code": "2822620004",
                "name": "ZPHS AGALI",
                "id": "beb0bcf4-d7cd-4a72-8f35-be8e5b03c0d1",
                "type": "cluster",
                "parentId": "966c3be4-c125-467d-aaff-1eb1cd525923",
            },
            {
                "code": "28226200816",
                "name": "SMT PRAMEELAMMA AND SRI KGA GUPTA EM UP SCHOOL",
                "id": "01337588247832985613211",
                "type": "school",
                "parentId": "",
            },
        ],
        "profileUserTypes": [{"subType": "deo", "type": "administrator"}],
        "framework": {"board": ["CBSE"], "medium": ["English"]},
        "rootOrg": {"id": "0126796199493140480", "orgName": "Staging Custodian Organization"},
    },
    "noOfResourcesStarted": 3,
    "updatedAt": "2023-01-12T06:30:56.829Z",
    "createdAt": "2023-01-12T06:30:09.476Z",
    "__v": 0,
}

# What the reference semantics make of it: 15 location keys, user type, sub-type, dates.
SEED_ROW: dict[str, Any] = {
    "program_id": "5f362b78af0a4decfa9a106f",
    "user_id": "ba9aa220-ff1b-4717-b6ea-ace55f04fc16",
    "program_externalid": "$programExternalId",
    "program_name": "$prorgramName",
    "pii_consent_required": True,
    "user_locations": {
        "district_name": "ANANTAPUR",
        "district_id": "2f76dcf5-e43b-4f71-a3f2-c8f19e1fce03",
        "district_code": "2822",
        "block_name": "AGALI",
        "block_id": "966c3be4-c125-467d-aaff-1eb1cd525923",
        "block_code": "282262",
        "state_name": "Andhra Pradesh",
        "state_id": "bc75cc99-9205-463e-a722-5326857838f8",
        "state_code": "28",
        "cluster_name": "ZPHS AGALI",
        "cluster_id": "beb0bcf4-d7cd-4a72-8f35-be8e5b03c0d1",
        "cluster_code": "2822620004",
        "school_name": "SMT PRAMEELAMMA AND SRI KGA GUPTA EM UP SCHOOL",
        "school_id": "01337588247832985613211",
        "school_code": "28226200816",
    },
    "organisation_id": "0126796199493140480",
    "organisation_name": "Staging Custodian Organization",
    "user_type": "administrator",
    "user_sub_type": "DEO",
    "created_at": dt.date(2023, 1, 12),
    "updated_at": dt.date(2023, 1, 12),
}


# The contract's two-event example: event 2 leaves locations, user types and created_at alone.
EVENT_1: dict[str, Any] = {
    "programId": "p1",
    "userId": "u1",
    "programName": "A",
    "userProfile": {
        "userLocations": [{"type": "state", "name": "Kerala"}],
        "rootOrg": {"id": "o1"},
        "profileUserTypes": [{"type": "administrator", "subType": "hm"}],
    },
    "createdAt": "2023-01-12T06:30:09.476Z",
    "updatedAt": "2023-03-01T10:00:00Z",
}
EVENT_2: dict[str, Any] = {
    "programId": "p1",
    "userId": "u1",
    "programName": "B",
    "userProfile": {"rootOrg": {"id": "o2", "orgName": "  "}},
    "updatedAt": "2023-04-02T10:00:00Z",
}
EXPECTED_AFTER_BOTH: dict[str, Any] = {
    "program_id": "p1",
    "user_id": "u1",
    "program_externalid": None,
    "program_name": "B",
    "pii_consent_required": False,
    "user_locations": {"state_name": "Kerala"},
    "organisation_id": "o2",
    "organisation_name": None,
    "user_type": "administrator",
    "user_sub_type": "HM",
    "created_at": dt.date(2023, 1, 12),
    "updated_at": dt.date(2023, 4, 2),
}


