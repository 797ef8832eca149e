-- +goose Up
insert into goose_greetings (message) values ('hello from goose');

-- +goose Down
delete from goose_greetings where message = 'hello from goose';
