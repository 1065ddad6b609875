from rayrec.schema import ColumnSchema, Schema, parse_pbtxt
from conftest import shared_path


def sample():
    return Schema([
        ColumnSchema("session", "string", tags=["session_id"]),
        ColumnSchema("item-list", "int64", is_list=True, tags=["item_id", "categorical", "list"],
                     value_count_min=2, value_count_max=20, domain_min=0, domain_max=101),
        ColumnSchema("price-list", "float32", is_list=True, tags=["continuous", "list"], value_count_max=20),
        ColumnSchema("day_index", "int64", tags=["time"]),
    ])


def test_json_round_trip():
    s = sample()
    assert Schema.from_json(s.to_json()) == s
    assert s.item_id_column().name == "item-list"
    assert s.item_id_column().cardinality == 102


def test_pbtxt_round_trip(tmp_path):
    s = sample()
    s.save(str(tmp_path))
    back = Schema.load(str(tmp_path / "schema.pbtxt"))
    assert back == s


def test_parser_handles_nesting_comments_and_repeats():
    msg = parse_pbtxt('# c\nfeature { name: "a" annotation { tag: "x" tag: "y" } }\nfeature { name: "b" }')
    assert [f["name"][0] for f in msg["feature"]] == ["a", "b"]
    assert msg["feature"][0]["annotation"][0]["tag"] == ["x", "y"]


def test_reads_schema_written_by_nvtabular():
    s = Schema.load(shared_path("data", "nvtabular-rees46", "schema.pbtxt"))
    item = s.item_id_column()
    assert item.name == "product_id-list_seq"
    assert item.is_list and item.value_count_max == 20
    assert item.domain_max == 1979 and "categorical" in item.tags
    price = s["price_log_norm-list_seq"]
    assert price.dtype.startswith("float") and "continuous" in price.tags and price.is_list
