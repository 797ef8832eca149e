-- +goose Up
create table goose_greetings (
    id bigint generated always as identity primary key,
    message text not null
);

-- +goose Down
drop table goose_greetings;
